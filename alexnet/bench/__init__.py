"""Throughput benchmarks: ``python -m alexnet.bench COMMAND`` (see ``__main__.py``).

``data`` times the loaders and storage encodings; ``train`` the training step and ``eval`` the
(10-view) evaluation, each of the configured net beside ``--compare`` nets (torchvision's
AlexNet, the net without LRN, the net with the former ``F.local_response_norm`` LRN); ``lrn``
the LRN op against the former implementation. Each module has ``add_arguments(parser)`` and
``run(args) -> int``; figures are printed with the hardware they were measured on.
"""
