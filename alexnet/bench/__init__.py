"""Throughput benchmarks: ``python -m alexnet.bench COMMAND`` (see ``__main__.py``).

``data`` times the loaders and storage encodings; ``train`` times the training step. Each
module has ``add_arguments(parser)`` and ``run(args) -> int``; figures are printed with the
hardware they were measured on.
"""
