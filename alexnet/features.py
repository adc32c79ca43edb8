"""Hidden-layer features of a trained network, and a linear probe on them.

``python -m alexnet.features --checkpoint X --data DIR --split S --layer fc7 --out F.npz``
streams a prepared split through the network (the checkpoint's own preprocessing, 1 or 10
views averaged) and writes each image's ``pool5``, ``fc6`` or ``fc7`` activations with its
label. The rows go to a memory-mapped file as they come, so memory stays bounded.

``--probe`` is the classic features-plus-linear-classifier experiment: a multinomial logistic
regression (softmax regression, L2-regularised, fitted with L-BFGS on standardised features)
trained on one split's features and scored on another's top-1 / top-5 error.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet import atomic
from alexnet.data.packed import PackedSplit
from alexnet.errors import UserError, report_user_errors
from alexnet.inference import Trained, load_trained
from alexnet.log import info
from alexnet.metrics import Accumulator

LAYERS = ("pool5", "fc6", "fc7")
EPILOG = """examples:
  python -m alexnet.features --checkpoint runs/ilsvrc2012/best.pt --data data/scene15 \\
      --split train --layer fc7 --out scene15-train-fc7.npz
  python -m alexnet.features --checkpoint runs/ilsvrc2012/best.pt --data data/scene15 \\
      --layer fc7 --probe --train-split train --split val --json probe.json
  python -m alexnet.features --checkpoint torchvision --data data/scene15 --layer fc6 --probe

The .npz holds features (N, D) float32, labels (N,), classes, class_names, layer and views."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.features",
        description="Write a split's pool5/fc6/fc7 features (streamed, labels included), or "
        "fit a linear probe (multinomial logistic regression) on one split's features and "
        "score it on another's.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a .pt of ours, or torchvision's weights")
    p.add_argument("--data", type=Path, required=True, help="a prepared data folder")
    p.add_argument("--split", default="val", help="split to extract / score (default val)")
    p.add_argument("--layer", choices=LAYERS, default="fc7", help="default fc7")
    p.add_argument("--out", type=Path, help="the .npz to write (extraction)")
    p.add_argument("--probe", action="store_true", help="fit and score a linear probe")
    p.add_argument("--train-split", default="train", help="the probe's training split")
    p.add_argument("--l2", type=float, default=1e-3, help="probe L2 weight (default 1e-3)")
    p.add_argument("--json", type=Path, help="write the probe's results to this JSON file")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="views averaged")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda:0 if present)")
    p.add_argument("--workers", type=int, help="loader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.probe == (args.out is not None):
        raise UserError("give either --out F.npz (write features) or --probe (fit a probe)")
    if args.l2 < 0 or args.batch_size < 1:
        raise UserError("--l2 must be >= 0 and --batch-size >= 1")
    trained = load_trained(args.checkpoint)
    opts = Options(args.crops, args.batch_size, args.device, args.workers, not args.no_progress)
    if not args.probe:
        write_features(trained, PackedSplit(args.data, args.split), args.layer, opts, args.out)
        info(f"wrote {args.out}")
        return 0
    train_split = PackedSplit(args.data, args.train_split)
    train = extract(trained, train_split, args.layer, opts)
    test = extract(trained, PackedSplit(args.data, args.split), args.layer, opts)
    probe = fit_probe(train.features, train.labels, len(train_split.classes), args.l2)
    result = {
        "checkpoint": trained.name,
        "data": str(args.data),
        "layer": args.layer,
        "train_split": args.train_split,
        "split": args.split,
        "l2": args.l2,
        "train": probe.score(train.features, train.labels),
        "test": probe.score(test.features, test.labels),
    }
    r = result["test"]
    info(
        f"linear probe on {args.layer} ({len(train.labels)} {args.train_split} images): "
        f"{args.split} top-1 error {100 * r['top1_err']:.2f}%, top-5 {100 * r['top5_err']:.2f}% "
        f"(accuracy {100 * r['top1_acc']:.2f}%) on {int(r['n'])} images"
    )
    if args.json:
        atomic.write_json(args.json, result)
    print(json.dumps(result))
    return 0


@dataclass
class Features:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Options:
    """How the images go through the network."""

    views: int = 1  # 1 (centre) or 10 (§4.1's patches), activations averaged
    batch_size: int = 64
    device: str | None = None  # default: cuda:0 if present, else the CPU
    workers: int | None = None  # loader worker processes
    progress: bool = True


def feature_size(trained: Trained, layer: str) -> int:
    """Width of ``layer``'s flattened output (pool5: conv5's maps x 6 x 6)."""
    model = trained.model
    sizes = {"pool5": model.fc6.in_features, "fc6": model.fc6.out_features}
    return {**sizes, "fc7": model.fc7.out_features}[layer]


@torch.no_grad()
def extract(
    trained: Trained,
    split: PackedSplit,
    layer: str,
    opts: Options,
    rows: np.ndarray | None = None,
) -> Features:
    """``layer``'s activations (after ReLU, before dropout) for every image of ``split``,
    views averaged, in the split's order; written into ``rows`` ((N, D), e.g. a memory map)
    when given."""
    rt = trained.runtime(opts.device)
    loader = trained.eval_loader(
        split, opts.views, opts.batch_size, rt.device, opts.workers, same_classes=False
    )
    model = trained.model.to(rt.device).eval()
    dim = feature_size(trained, layer)
    rows = np.empty((len(split), dim), np.float32) if rows is None else rows
    labels = np.empty(len(split), np.int64)
    done = 0
    desc = f"{split.split} {layer}"
    for views, y in tqdm(loader, desc=desc, unit="batch", disable=not opts.progress):
        b, v = views.shape[:2]
        with rt.autocast():
            f = model.forward_to(rt.batch(views.flatten(0, 1)), layer).float()
        rows[done : done + b] = f.view(b, v, dim).mean(1).cpu().numpy()
        labels[done : done + b] = y.cpu().numpy()
        done += b
    return Features(rows, labels)


def write_features(
    trained: Trained, split: PackedSplit, layer: str, opts: Options, out: Path
) -> None:
    """``extract`` into ``out`` (.npz, written atomically); the rows pass through a hidden
    memory-mapped file beside it, so memory stays bounded whatever the split's size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"  # atomic.py's temp pattern
    try:
        shape = (len(split), feature_size(trained, layer))
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        found = extract(trained, split, layer, opts, rows)
        atomic.save_npz(
            out,
            features=found.features,
            labels=found.labels,
            classes=np.array(split.classes, str),  # what the labels index
            class_names=np.array(split.class_names, str),
            layer=np.array(layer),
            views=np.int64(opts.views),
            checkpoint=np.array(trained.name),
        )
        del rows, found
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Probe:
    """A softmax regression on standardised features: ``softmax(((x - mean) / std) W^T + b)``."""

    weight: torch.Tensor  # (C, D) float64
    bias: torch.Tensor  # (C,)
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    def logits(self, features: np.ndarray) -> torch.Tensor:
        x = (torch.from_numpy(np.asarray(features)).double() - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def score(self, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Top-1 / top-5 error and accuracy, and the mean cross-entropy."""
        logits, y = self.logits(features), torch.from_numpy(np.asarray(labels))
        totals = Accumulator()
        totals.update(logits, y, F.cross_entropy(logits, y))
        return totals.rates()


def fit_probe(
    features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float, max_iter: int = 500
) -> Probe:
    """Minimise ``mean cross-entropy + l2 / 2 * ||W||^2`` (the bias is not penalised) over
    standardised features, in float64, with L-BFGS (strong Wolfe line search)."""
    x = torch.from_numpy(np.asarray(features)).double()
    y = torch.from_numpy(np.asarray(labels))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)  # constant features (dead units) stay 0
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(weight.detach(), bias.detach(), mean, std)


if __name__ == "__main__":
    sys.exit(main())
