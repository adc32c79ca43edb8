"""engine.train_one_epoch and engine.evaluate on the real model, without the CLI around them."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.config import load_config
from alexnet.data.loaders import EvalLoader, TrainLoader
from alexnet.data.packed import PackedSplit, load_stats
from alexnet.model import build_model
from alexnet.runtime import Placement, Runtime
from alexnet.training.engine import EpochSpan, Hooks, evaluate, predict, train_one_epoch
from alexnet.training.optim import build_optimizer

from conftest import assert_close_to_f64

CPU = Runtime("single", (torch.device("cpu"),))


def test_a_tiny_run_overfits_one_small_batch(prepared_tiny: Path) -> None:
    """The faithful net (towers, LRN) and the paper's SGD memorise four images.

    torch's default init and no dropout: with the paper's init the loss first wanders for a
    while (its known stall), which would make this slow; here it falls below 0.05 within about
    20 steps, so 40 leave a wide margin on any CPU.
    """
    overrides = [
        "model.num_classes=4",
        "model.dropout.p=0",
        "model.init.preset=pytorch_default",
        "optim.lr=0.003",
        "data.workers=0",
        f"data.root={prepared_tiny}",
    ]
    cfg = load_config(None, overrides)
    model = build_model(cfg.model)
    split = PackedSplit(prepared_tiny, "train")
    train = replace(cfg.train, batch_size=4, seed=0)
    loader = TrainLoader(
        split, load_stats(prepared_tiny), cfg.data, cfg.augment, train, cfg.model, Placement()
    )
    images, labels = next(iter(loader.epoch(0)))
    optimizer = build_optimizer(model, cfg.optim)
    losses: list[float] = []
    hooks = Hooks(log=lambda step, values: losses.append(values["loss"]))
    span = EpochSpan(0, 0, 40, 0, log_every=1, checkpoint_every=0)
    batches = itertools.repeat((images, labels))
    result = train_one_epoch(model, batches, optimizer, CPU, span, hooks, show_progress=False)
    assert result.steps_done == 40 and result.images == 40 * 4 and len(losses) == 40
    assert losses[-1] < 0.05 < losses[0]
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(images).argmax(1), labels)
        assert F.cross_entropy(model(images), labels) < 0.05


def test_evaluate_counts_views_and_averages_softmax(prepared_tiny: Path) -> None:
    cfg = load_config(None, ["model.num_classes=4", "data.workers=0"])
    model = build_model(cfg.model).eval()
    split = PackedSplit(prepared_tiny, "val")
    stats = load_stats(prepared_tiny)
    ten = EvalLoader(split, stats, cfg.data, cfg.model, 10, 5, Placement())
    result = evaluate(model, ten, CPU, expected=len(split), show_progress=False)
    probs, labels = [], []
    with torch.no_grad():
        for views, y in ten:
            n, v = views.shape[:2]
            probs.append(torch.softmax(model(views.flatten(0, 1)), 1).view(n, v, -1).mean(1))
            labels.append(y)
    p, y = torch.cat(probs), torch.cat(labels)
    top1 = (p.argmax(1) == y).float().mean().item()
    assert result["n"] == len(split) == 16
    assert abs(result["top1_acc"] - top1) < 1e-9
    assert abs(result["loss"] - F.nll_loss(p.log(), y).item()) < 1e-5


def test_predict_returns_each_images_averaged_softmax(prepared_tiny: Path) -> None:
    cfg = load_config(None, ["model.num_classes=4", "data.workers=0"])
    model = build_model(cfg.model).double().eval()
    split = PackedSplit(prepared_tiny, "val")
    stats = load_stats(prepared_tiny)
    loader = EvalLoader(split, stats, cfg.data, cfg.model, 10, 3, Placement())
    probs, labels = predict(model.float(), loader, CPU, show_progress=False)
    assert probs.shape == (16, 4) and probs.dtype == torch.float32
    assert torch.equal(labels, split.labels)
    model.double()
    for i, (views, _) in enumerate(loader):  # float64, one image at a time, as a reference
        for j in range(len(views)):
            with torch.no_grad():
                ref = torch.softmax(model(views[j].double()), dim=1).mean(0)
            assert_close_to_f64(probs[3 * i + j], ref, ulps=1024)
