"""Figures of a training run: the paper's Fig. 3 (``kernels``) and Fig. 4 (``predictions``,
``neighbours``), learning ``curves``, per-class errors (``confusion``), an ablation ``table``, and
what TensorBoard shows during training (``board``). The command line is
``python -m alexnet.figures`` (``__main__.py``)."""
