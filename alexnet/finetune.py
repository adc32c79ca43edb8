"""``python -m alexnet.finetune --config CONFIG.yaml``: train from trained weights.

A fine-tuning run is an ordinary training run (``alexnet.training.loop.run``) whose config sets
``finetune.init_from``; this command refuses a config without it (see
``alexnet.training.finetune`` for what is loaded, kept fresh and frozen).
"""

from __future__ import annotations

import argparse
import sys

from alexnet import cli
from alexnet.config import Config
from alexnet.errors import UserError, report_user_errors
from alexnet.training.loop import run

EPILOG = """examples:
  python -m alexnet.finetune --config configs/scene15_finetune.yaml
  python -m alexnet.finetune --config configs/scene15_finetune_ours.yaml \\
      --set finetune.init_from=runs/ilsvrc2012/best.pt
  python -m alexnet.finetune --config configs/scene15_finetune.yaml \\
      --set finetune.init_from=/path/to/alexnet-owt-7be5be79.pth
  python -m alexnet.finetune --config configs/scene15_finetune.yaml \\
      --set "finetune.freeze=[conv1,conv2,conv3,conv4,conv5]" --set finetune.lr_mult.fc8=10

The run is an ordinary alexnet.train run (see its --help): resume it with --resume auto.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python -m alexnet.finetune",
        "Fine-tune trained weights on a data set: python -m alexnet.train with "
        "finetune.init_from required (torchvision, a checkpoint of ours, or a torchvision "
        "state dict file). Layers that do not fit start afresh; finetune.freeze keeps layers "
        "fixed; finetune.lr_mult scales a layer's learning rate.",
        EPILOG,
    )
    cli.add_config_options(p, required=True)
    cli.add_training_options(p)
    return p.parse_args(argv)


def _checked(cfg: Config, source: str) -> Config:
    if cfg.finetune.init_from is None:
        raise UserError(
            f"{source} does not set finetune.init_from: add --set "
            "finetune.init_from=torchvision (or a checkpoint), or train from scratch with "
            "python -m alexnet.train"
        )
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(
        lambda: run(
            _checked(cli.config_from_args(args), str(args.config)),
            args.resume,
            progress=not args.no_progress,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
