"""``python -m alexnet.figures SUBCOMMAND``: the paper's figures and tables for a training run.

Each subcommand reads a run folder written by ``alexnet.train`` and writes a PNG to
``<run>/figures/<name>.png`` (``--out`` to change); ``all`` writes every figure of one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet import cli
from alexnet.errors import report_user_errors
from alexnet.figures import confusion, curves, kernels, neighbours, predictions, table
from alexnet.figures.every import ALL, draw_all

EPILOG = """examples:
  python -m alexnet.figures all runs/demo          every figure of a run, into runs/demo/figures/
  python -m alexnet.figures kernels runs/demo      Fig. 3 and each tower's colour fraction
  python -m alexnet.figures kernels runs/demo --per-kernel
  python -m alexnet.figures predictions runs/demo -n 12 --errors-only --crops 10
  python -m alexnet.figures neighbours runs/ilsvrc2012 -n 5 -k 6 --device cuda
  python -m alexnet.figures curves runs/ablations/baseline runs/ablations/no_lrn --out curves.png
  python -m alexnet.figures confusion runs/demo --crops 1
  python -m alexnet.figures table runs/ablations/* --baseline runs/ablations/baseline
"""

COMMANDS = {
    "kernels": (kernels, "conv1's kernels per tower and their colour specificity (Fig. 3)"),
    "predictions": (predictions, "validation images with their top-5 classes (Fig. 4 left)"),
    "neighbours": (
        neighbours,
        "training images nearest in fc7 to validation images (Fig. 4 right)",
    ),
    "curves": (curves, "loss and top-1 / top-5 error per epoch of one or more runs"),
    "confusion": (confusion, "per-class error and the confusion matrix (or most confused pairs)"),
    "table": (table, "markdown table of runs' errors against a baseline and the paper's ablations"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.figures",
        description="Draw what a run learned: the paper's Figures 3 and 4, learning curves, "
        "per-class errors and an ablation table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, (module, help_text) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    every = sub.add_parser("all", help="every figure of one run", description=f"{', '.join(ALL)}")
    every.add_argument("run", type=Path, help="run folder")
    every.add_argument("--crops", type=int, choices=(1, 10), help="views (default: eval.views)")
    cli.add_inference_options(every, workers_help="loader processes (default: the run's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "all":
        return report_user_errors(lambda: _all(args))
    module = COMMANDS[args.command][0]
    return report_user_errors(lambda: module.run(args))


def _all(args: argparse.Namespace) -> int:
    draw_all(args.run, args.device, args.crops, not args.no_progress, args.workers, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
