"""Top-1 / top-5 error of a checkpoint: ``python -m alexnet.eval --checkpoint runs/x/best.pt``.

The model is rebuilt from the config stored in the checkpoint, and the images are normalised
with the training-set statistics stored beside the weights, so the result does not depend on
the command line. The protocol is the run's ``eval.views`` (the paper's ten views, §4.1: four
corners and centre, plus mirrors, softmax averaged); ``--crops 1 --crops 10`` reports both.
Device and precision come from ``alexnet.runtime``, as in training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from alexnet import atomic, runtime
from alexnet.checkpoint import load_checkpoint
from alexnet.config import ParallelConfig, config_from_dict, input_size
from alexnet.data.loaders import EvalLoader
from alexnet.data.packed import PackedSplit, Stats
from alexnet.engine import evaluate
from alexnet.errors import UserError, report_user_errors
from alexnet.log import info
from alexnet.model import build_model

EPILOG = """examples:
  python -m alexnet.eval --checkpoint runs/ilsvrc2012/best.pt
  python -m alexnet.eval --checkpoint runs/demo/best.pt --crops 1 --crops 10 --json eval.json
  python -m alexnet.eval --checkpoint best.pt --data data/ilsvrc2012 --split val --device cuda
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.eval",
        description="Report top-1/top-5 error (and accuracy) of a checkpoint for 1 and 10 crops.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a .pt file written by alexnet.train"
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
    state = load_checkpoint(args.checkpoint)
    for key in ("config", "model", "data_stats"):
        if key not in state:
            raise UserError(
                f"{args.checkpoint} has no '{key}' entry; it was not written by alexnet.train"
            )
    cfg = config_from_dict(state["config"], f"config stored in {args.checkpoint}")
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(
            f"{args.checkpoint}: weights do not fit its own config: {str(err).splitlines()[0]}"
        ) from None
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    devices = (args.device,) if args.device else ()
    rt = runtime.setup(ParallelConfig(mode="single", devices=devices), cfg.runtime)
    module = rt.wrap(model)
    data_cfg = cfg.data
    if args.workers is not None:
        data_cfg = dataclasses.replace(data_cfg, workers=args.workers)
    root = args.data or data_cfg.root
    split = PackedSplit(root, args.split or data_cfg.val_split)
    if split.classes != state.get("classes", split.classes):
        raise UserError(f"{root} has other classes than the checkpoint was trained on")
    stats = _stats(state["data_stats"])
    results: dict[str, Any] = {}
    for views in sorted(set(args.crops or (cfg.eval.views,))):
        loader = EvalLoader(
            split,
            stats,
            data=data_cfg,
            input_size=input_size(cfg.model),
            batch_size=args.batch_size or cfg.eval.batch_size,
            device=rt.device,
            views=views,
        )
        r = evaluate(module, loader, rt, expected=len(split), show_progress=not args.no_progress)
        results[str(views)] = r
        info(
            f"{views:>2} crop{'s' if views > 1 else ' '}: top-1 error {100 * r['top1_err']:6.2f}%  "
            f"top-5 error {100 * r['top5_err']:6.2f}%  (accuracy {100 * r['top1_acc']:.2f}% / "
            f"{100 * r['top5_acc']:.2f}%) on {int(r['n'])} images"
        )
    report = {
        "checkpoint": str(args.checkpoint),
        "data": str(root),
        "split": split.split,
        "images": len(split),
        "epoch": state.get("epoch"),
        "results": results,
    }
    if args.json:
        atomic.write_json(args.json, report)
    print(json.dumps(report))
    return 0


def _stats(payload: dict[str, torch.Tensor]) -> Stats:
    arrays = {k: payload[k].double().numpy() for k in ("mean", "cov", "eigval", "eigvec")}
    return Stats(arrays["mean"], arrays["cov"], arrays["eigval"], arrays["eigvec"], pixels=0)


if __name__ == "__main__":
    sys.exit(main())
