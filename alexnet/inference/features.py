"""Hidden-layer features of a trained network, and a linear probe on them.

``layer_outputs`` streams batches through the network up to ``pool5``, ``fc6`` or ``fc7`` (after
the ReLU, before dropout), views averaged: the one feature extractor, used by ``extract`` (a whole
split into rows, maybe a memory map), ``write_features`` (an ``.npz``), the neighbours figure and
TensorBoard's embedding. ``probe`` is the classic features-plus-linear-classifier experiment: a
multinomial logistic regression (softmax regression, L2-regularised, fitted with L-BFGS on
standardised features) trained on one split's features and scored on another's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet import atomic
from alexnet.data.loaders import Batch
from alexnet.data.packed import PackedSplit
from alexnet.inference.trained import Trained
from alexnet.metrics import Accumulator
from alexnet.model import AlexNet
from alexnet.runtime import Runtime

LAYERS = ("pool5", "fc6", "fc7")


@dataclass
class Features:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64


@torch.no_grad()
def layer_outputs(
    model: AlexNet, batches: Iterable[Batch], rt: Runtime, layer: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(activations (n, D) float32, labels (n,)) per batch of (views (n, V, 3, S, S), labels):
    ``layer``'s output for every view, averaged over the views."""
    model.eval()
    for views, labels in batches:
        n, v = views.shape[:2]
        with rt.autocast(evaluation=True):
            out = model.forward_to(rt.batch(views.flatten(0, 1)), layer).float()
        yield out.view(n, v, -1).mean(1), labels


def feature_size(model: AlexNet, layer: str) -> int:
    """Width of ``layer``'s flattened output (pool5: conv5's maps x 6 x 6)."""
    sizes = {"pool5": model.fc6.in_features, "fc6": model.fc6.out_features}
    return {**sizes, "fc7": model.fc7.out_features}[layer]


def extract(
    trained: Trained,
    split: PackedSplit,
    layer: str,
    views: int = 1,
    progress: bool = True,
    rows: np.ndarray | None = None,
) -> Features:
    """``layer``'s activations for every image of ``split`` (any classes), ``views`` (1 or 10)
    averaged, in the split's order; written into ``rows`` ((N, D), e.g. a memory map) when
    given."""
    loader = trained.loader(split, views, same_classes=False)
    rows = (
        np.empty((len(split), feature_size(trained.model, layer)), np.float32)
        if rows is None
        else rows
    )
    labels = np.empty(len(split), np.int64)
    done = 0
    bar = tqdm(loader, desc=f"{split.split} {layer}", unit="batch", disable=not progress)
    for f, y in layer_outputs(trained.model, bar, trained.rt, layer):
        rows[done : done + len(y)] = f.cpu().numpy()
        labels[done : done + len(y)] = y.cpu().numpy()
        done += len(y)
    return Features(rows, labels)


def write_features(
    trained: Trained,
    split: PackedSplit,
    layer: str,
    out: Path,
    views: int = 1,
    progress: bool = True,
) -> None:
    """``extract`` into ``out`` (.npz, written atomically); the rows pass through a hidden
    memory-mapped file beside it, so memory stays bounded whatever the split's size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"  # atomic.py's temp pattern
    try:
        shape = (len(split), feature_size(trained.model, layer))
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        found = extract(trained, split, layer, views, progress, rows)
        atomic.save_npz(
            out,
            features=found.features,
            labels=found.labels,
            classes=np.array(split.classes, str),  # what the labels index
            class_names=np.array(split.class_names, str),
            layer=np.array(layer),
            views=np.int64(views),
            checkpoint=np.array(trained.name),
        )
        del rows, found
    finally:
        tmp.unlink(missing_ok=True)


def probe(
    trained: Trained,
    train_split: PackedSplit,
    test_split: PackedSplit,
    layer: str,
    l2: float,
    views: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit a linear probe on ``train_split``'s ``layer`` features, score it on both splits:
    ``{"train": rates, "test": rates}`` (top-1/top-5 error and accuracy, loss, n)."""
    train = extract(trained, train_split, layer, views, progress)
    test = extract(trained, test_split, layer, views, progress)
    fitted = fit_probe(train.features, train.labels, len(train_split.classes), l2)
    return {
        "train": fitted.score(train.features, train.labels),
        "test": fitted.score(test.features, test.labels),
    }


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
