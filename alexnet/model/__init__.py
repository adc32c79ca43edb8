"""AlexNet: the network (``network``), its LRN and dropout layers (``layers``; the LRN ops in
``lrn``, ``lrn_pool`` and their portable and Triton paths), the forms of its tower-local convs
(``tower_conv``), the two-device form (``towers``) and the layer table (``summary``;
``python -m alexnet.model``)."""

from alexnet.model.layers import PaperDropout, PaperLRN
from alexnet.model.network import AlexNet, build_model, init_weights

__all__ = ["AlexNet", "PaperDropout", "PaperLRN", "build_model", "init_weights"]
