"""Top-1 / top-5 error of a trained network, or of an ensemble of them.

The model and its preprocessing come from the checkpoint (``trained``), so the result does not
depend on the command line. The protocol is the paper's ten views (§4.1: four corners and centre,
plus mirrors, softmax averaged) or the centre crop. With several networks the softmax of every
model and view is averaged, each model with its own stored preprocessing (the paper's Table 2
ensembles: five networks, 38.1 % / 16.4 % against 40.7 % / 18.2 % for one); each model is
reported alone and then the ensemble. Models trained on different class lists are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from alexnet.data.packed import PackedSplit
from alexnet.errors import UserError
from alexnet.inference.trained import Trained
from alexnet.log import info
from alexnet.metrics import Accumulator, check_count
from alexnet.training.engine import predict, unscored_images


def evaluate_models(
    models: Sequence[Trained], split: PackedSplit, views: Sequence[int], progress: bool = True
) -> dict[str, Any]:
    """Each protocol of ``views`` (1 and/or 10) on every image of ``split``; prints a line per
    model (and the ensemble) and returns the report that ``python -m alexnet.eval`` writes:
    ``{"checkpoint" | "checkpoints", "data", "split", "images", ["epoch" | "models"],
    "results": {"1": rates, "10": rates}}``, rates as ``Accumulator.rates``."""
    first = models[0]
    for other in models[1:]:
        if other.classes != first.classes:
            raise UserError(
                f"{other.name} was trained on other classes than {first.name} "
                f"({len(other.classes)} vs {len(first.classes)}); an ensemble needs one class list"
            )
    results: dict[str, Any] = {}
    alone: dict[str, dict[str, Any]] = {m.name: {} for m in models}
    for v in sorted(set(views)):
        total, labels, unscored = None, None, 0
        for m in models:
            probs, labels, unscored = probabilities(m, split, v, progress)
            alone[m.name][str(v)] = rates(probs, labels, len(split), unscored)
            total = probs if total is None else total.add_(probs)
        if len(models) == 1:
            results[str(v)] = alone[first.name][str(v)]
        else:
            for m in models:
                _print(v, alone[m.name][str(v)], m.name)
            results[str(v)] = rates(total / len(models), labels, len(split), unscored)
        _print(v, results[str(v)], f"ensemble of {len(models)}" if len(models) > 1 else "")
    report: dict[str, Any] = {"data": str(split.root), "split": split.split, "images": len(split)}
    if len(models) == 1:
        report = {"checkpoint": first.name, **report, "epoch": first.epoch}
    else:
        report = {"checkpoints": [m.name for m in models], **report, "models": alone}
    report["results"] = results
    return report


def probabilities(
    m: Trained, split: PackedSplit, views: int, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every readable image's softmax averaged over ``views`` views (§4.1), with its own
    preprocessing, their labels, and how many images were corrupt records left out (with
    ``data.on_corrupt: stop`` there are none: ``CorruptRecord`` names the first)."""
    module = m.rt.wrap(m.model)  # the run's memory format and compile setting
    loader = m.loader(split, views)
    probs, labels = predict(module, loader, m.rt, show_progress=progress)
    return probs, labels, unscored_images(loader, m.rt)


def rates(
    probs: torch.Tensor, labels: torch.Tensor, expected: int, unscored: int = 0
) -> dict[str, float]:
    """Top-1/top-5 error and accuracy, and the loss (-log of the true class's probability),
    over the images scored; ``unscored`` images (corrupt records) make up ``expected``."""
    totals = Accumulator()
    totals.update(probs, labels, F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    check_count(totals.n + unscored, expected)
    return {**totals.rates(), "unscored": unscored}


def _print(views: int, r: dict[str, float], who: str) -> None:
    label = f"{views:>2} crop{'s' if views > 1 else ' '}"
    info(
        f"{label}: top-1 error {100 * r['top1_err']:6.2f}%  top-5 error "
        f"{100 * r['top5_err']:6.2f}%  (accuracy {100 * r['top1_acc']:.2f}% / "
        f"{100 * r['top5_acc']:.2f}%) on {int(r['n'])} images"
        + (f" ({r['unscored']:.0f} corrupt, not scored)" * bool(r.get("unscored")))
        + (f"  [{who}]" if who else "")
    )
