"""AlexNet: the network (``network``), its LRN and dropout layers (``layers``), the two-device
form (``towers``) and the layer table (``summary``; ``python -m alexnet.model``)."""

from alexnet.model.layers import PaperDropout, PaperLRN
from alexnet.model.network import AlexNet, build_model, init_weights

__all__ = ["AlexNet", "PaperDropout", "PaperLRN", "build_model", "init_weights"]
