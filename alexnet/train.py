"""``python -m alexnet.train --config CONFIG.yaml``: train AlexNet with the paper's recipe.

Parses the arguments and calls ``alexnet.training.loop.run``; everything else lives there.
"""

from __future__ import annotations

import argparse
import sys

from alexnet import cli
from alexnet.errors import report_user_errors
from alexnet.training.loop import run

EPILOG = """examples:
  python -m alexnet.train --config configs/ilsvrc2012.yaml
  python -m alexnet.train --config configs/demo.yaml --set train.epochs=2 --set optim.lr=0.005
  python -m alexnet.train --config configs/ilsvrc2012.yaml --resume auto
  python -m alexnet.train --config configs/ilsvrc2012.yaml --set parallel.mode=two_device
  torchrun --nproc_per_node=8 -m alexnet.train --config configs/ilsvrc2012.yaml \\
      --set parallel.mode=ddp
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python -m alexnet.train",
        "Train the 2012 AlexNet. Defaults are the paper's; see configs/ and README.",
        EPILOG,
    )
    cli.add_config_options(p)
    cli.add_training_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(
        lambda: run(cli.config_from_args(args), args.resume, progress=not args.no_progress)
    )


if __name__ == "__main__":
    sys.exit(main())
