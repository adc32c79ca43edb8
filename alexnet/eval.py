"""``python -m alexnet.eval --checkpoint X [Y ...]``: top-1 / top-5 error, alone or ensembled.

Parses the arguments and calls ``alexnet.inference.evaluation.evaluate_models``: the model and
its preprocessing come from each checkpoint, the protocol from ``--crops`` (default: the run's
``eval.views``, the paper's ten views).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alexnet import atomic, cli
from alexnet.errors import report_user_errors
from alexnet.inference.evaluation import evaluate_models
from alexnet.inference.trained import load_trained

EPILOG = """examples:
  python -m alexnet.eval --checkpoint runs/ilsvrc2012/best.pt
  python -m alexnet.eval --checkpoint runs/demo/best.pt --crops 1 --crops 10 --json eval.json
  python -m alexnet.eval --checkpoint best.pt --data data/ilsvrc2012 --split val --device cuda
  python -m alexnet.eval --checkpoint runs/seed*/best.pt --crops 10   # an ensemble
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python -m alexnet.eval",
        "Report top-1/top-5 error (and accuracy) of a checkpoint, or of an ensemble of "
        "checkpoints (softmax averaged over models and views), for 1 and 10 crops.",
        EPILOG,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help=".pt files written by alexnet.train; several = an ensemble",
    )
    p.add_argument("--data", type=Path, help="prepared data folder (default: the run's data.root)")
    p.add_argument("--split", help="split to evaluate (default: the run's data.val_split)")
    p.add_argument(
        "--crops",
        type=int,
        choices=(1, 10),
        action="append",
        help="1 (centre crop) or 10 (paper §4.1); repeatable; default: the run's eval.views",
    )
    cli.add_inference_options(p)
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _eval(args))


def _eval(args: argparse.Namespace) -> int:
    changes = dict(data=args.data, workers=args.workers, batch_size=args.batch_size)
    models = [load_trained(path, args.device, **changes) for path in args.checkpoint]
    split = models[0].split(args.split)
    views = args.crops or [m.cfg.eval.views for m in models]
    report = evaluate_models(models, split, views, progress=not args.no_progress)
    if args.json:
        atomic.write_json(args.json, report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
