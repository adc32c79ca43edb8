"""What the commands' argument parsers share: one definition of each option group.

Every ``python -m alexnet.<command>`` builds its parser from ``parser`` and these groups, so an
option means the same everywhere: the config options (``--config``, ``--set``), the training
options (``--resume``, ``--no-progress``) and the inference options (``--device``,
``--workers``, ``--batch-size``, ``--no-progress``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alexnet.config import Config, load_config


def parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` keeps the examples in ``epilog`` as written."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_config_options(
    p: argparse.ArgumentParser, required: bool = False, what: str = "the paper's recipe"
) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` overrides (``config_from_args``)."""
    default = "" if required else f" (default: {what})"
    p.add_argument("--config", type=Path, required=required, help=f"YAML config{default}")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.005 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The ``Config`` that ``add_config_options``' arguments name."""
    return load_config(args.config, args.set)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--no-progress`` of the commands that train."""
    p.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue from a checkpoint, or 'auto' for run.dir/last.pt if present",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_inference_options(
    p: argparse.ArgumentParser,
    batch_size: int | None = None,
    batch_help: str = "images per batch",
    workers_help: str = "loader worker processes (default: the cores, at most 8)",
) -> None:
    """``--device``, ``--workers``, ``--batch-size`` and ``--no-progress`` of the commands that
    run a trained network; ``batch_size`` None means the checkpoint's ``eval.batch_size``."""
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda:0 if present, else cpu)")
    p.add_argument("--workers", type=int, metavar="N", help=workers_help)
    default = f"default {batch_size}" if batch_size else "default: eval.batch_size"
    p.add_argument(
        "--batch-size", type=int, default=batch_size, metavar="N", help=f"{batch_help} ({default})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
