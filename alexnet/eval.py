"""Top-1 / top-5 error of a checkpoint, or of an ensemble of checkpoints.

``python -m alexnet.eval --checkpoint runs/x/best.pt`` rebuilds the model from the config stored
in the checkpoint and normalises the images with the training-set statistics stored beside the
weights, so the result does not depend on the command line. The protocol is the run's
``eval.views`` (the paper's ten views, §4.1: four corners and centre, plus mirrors, softmax
averaged); ``--crops 1 --crops 10`` reports both.

With several checkpoints (``--checkpoint a.pt b.pt ...``) the softmax of every model and view is
averaged, each model with its own stored preprocessing (the paper's Table 2 ensembles: five
networks, 38.1 % / 16.4 % against 40.7 % / 18.2 % for one); each model is reported alone and then
the ensemble. Models trained on different class lists are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alexnet import atomic
from alexnet.data.packed import PackedSplit
from alexnet.engine import predict
from alexnet.errors import UserError, report_user_errors
from alexnet.inference import Trained, load_trained
from alexnet.log import info
from alexnet.metrics import Accumulator, check_count

EPILOG = """examples:
  python -m alexnet.eval --checkpoint runs/ilsvrc2012/best.pt
  python -m alexnet.eval --checkpoint runs/demo/best.pt --crops 1 --crops 10 --json eval.json
  python -m alexnet.eval --checkpoint best.pt --data data/ilsvrc2012 --split val --device cuda
  python -m alexnet.eval --checkpoint runs/seed*/best.pt --crops 10   # an ensemble
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.eval",
        description="Report top-1/top-5 error (and accuracy) of a checkpoint, or of an ensemble "
        "of checkpoints (softmax averaged over models and views), for 1 and 10 crops.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: eval.batch_size)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, ... (default: cuda:0 if present, else cpu)",
    )
    p.add_argument("--workers", type=int, default=None, help="loader worker processes")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _eval(args))


def _eval(args: argparse.Namespace) -> int:
    models = [load_trained(path) for path in args.checkpoint]
    first = models[0]
    for other in models[1:]:
        if other.classes != first.classes:
            raise UserError(
                f"{other.name} was trained on other classes than {first.name} "
                f"({len(other.classes)} vs {len(first.classes)}); an ensemble needs one class list"
            )
    root = args.data or first.cfg.data.root
    split = PackedSplit(root, args.split or first.cfg.data.val_split)
    results: dict[str, Any] = {}
    alone: dict[str, dict[str, Any]] = {m.name: {} for m in models}
    for views in sorted(set(args.crops or (m.cfg.eval.views for m in models))):
        total = None
        for m in models:
            probs, labels = _probabilities(m, split, views, args)
            alone[m.name][str(views)] = _rates(probs, labels, len(split))
            total = probs if total is None else total.add_(probs)
        if len(models) == 1:
            results[str(views)] = alone[first.name][str(views)]
        else:
            for m in models:
                _print(views, alone[m.name][str(views)], m.name)
            results[str(views)] = _rates(total / len(models), labels, len(split))
        _print(views, results[str(views)], f"ensemble of {len(models)}" if len(models) > 1 else "")
    report: dict[str, Any] = {"data": str(root), "split": split.split, "images": len(split)}
    if len(models) == 1:
        report = {"checkpoint": str(first.name), **report, "epoch": first.epoch}
    else:
        report = {"checkpoints": [m.name for m in models], **report, "models": alone}
    report["results"] = results
    if args.json:
        atomic.write_json(args.json, report)
    print(json.dumps(report))
    return 0


def _probabilities(
    m: Trained, split: PackedSplit, views: int, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's softmax averaged over ``views`` views (§4.1), with its own preprocessing."""
    rt = m.runtime(args.device)
    loader = m.eval_loader(
        split, views, args.batch_size or m.cfg.eval.batch_size, rt.device, args.workers
    )
    return predict(rt.wrap(m.model), loader, rt, show_progress=not args.no_progress)


def _rates(probs: torch.Tensor, labels: torch.Tensor, expected: int) -> dict[str, float]:
    """Top-1/top-5 error and accuracy, and the loss (-log of the true class's probability)."""
    totals = Accumulator()
    totals.update(probs, labels, F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    check_count(totals.n, expected)
    return totals.rates()


def _print(views: int, r: dict[str, float], who: str) -> None:
    label = f"{views:>2} crop{'s' if views > 1 else ' '}"
    info(
        f"{label}: top-1 error {100 * r['top1_err']:6.2f}%  top-5 error "
        f"{100 * r['top5_err']:6.2f}%  (accuracy {100 * r['top1_acc']:.2f}% / "
        f"{100 * r['top5_acc']:.2f}%) on {int(r['n'])} images" + (f"  [{who}]" if who else "")
    )


if __name__ == "__main__":
    sys.exit(main())
