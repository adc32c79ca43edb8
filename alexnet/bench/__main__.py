"""``python -m alexnet.bench COMMAND``: measure throughput on this machine."""

from __future__ import annotations

import argparse
import importlib
import sys

from alexnet.errors import report_user_errors

# command: (module in alexnet.bench, one-line help)
COMMANDS = {
    "data": ("data", "images/s of the loaders, ImageFolder and the packed encodings"),
    "train": ("train", "images/s of the training step; --compare torchvision, no_lrn, former_lrn"),
    "eval": ("eval", "images/s of (10-view) evaluation; --compare torchvision, no_lrn, former_lrn"),
    "lrn": ("lrn", "the LRN op and the fused LRN + pool op, each against its traffic floor"),
    "prepare": ("prepare", "images/s of prepare's decode, resize, encode; archives vs folders"),
}

EPILOG = """examples:
  python -m alexnet.bench train
  python -m alexnet.bench train --set runtime.dtype=bfloat16 --set train.batch_size=512
  python -m alexnet.bench train --compare torchvision --compare no_lrn --set train.batch_size=32
  python -m alexnet.bench eval --compare torchvision --set runtime.eval_dtype=bfloat16
  python -m alexnet.bench lrn --shape 32,96,55,55 --shape 32,256,27,27
  python -m alexnet.bench data --data data/ilsvrc2012 --raw /imagenet/train
  python -m alexnet.bench data --data data/smoke --workers 0 --batch-size 16 --steps 5
  python -m alexnet.bench prepare --photos ../shared/data/imagenet_sample_images --rounds 3
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet.bench",
        description="Measure throughput on this machine; figures are printed with the hardware.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        importlib.import_module(f"alexnet.bench.{module}").add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"alexnet.bench.{COMMANDS[args.command][0]}")
    return report_user_errors(lambda: module.run(args))


if __name__ == "__main__":
    sys.exit(main())
