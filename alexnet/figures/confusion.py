"""Per-class error and the confusion matrix of a run on its validation split.

Predictions are the evaluator's (``training.engine.predict``: views softmax-averaged, §4.1);
row ``i`` of the matrix counts the images of class ``i`` by predicted (top-1) class. With up to
``MATRIX_CLASSES`` classes the matrix is drawn; with more, the figure shows the classes with the
highest error and ``confusion.md`` beside it lists the most confused pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from alexnet import atomic
from alexnet.figures.common import (
    Trained,
    add_model_arguments,
    output_path,
    save_figure,
    short_names,
    trained_from_args,
)
from alexnet.log import info
from alexnet.training.engine import predict

MATRIX_CLASSES = 30  # draw the matrix up to this many classes
WORST = 30  # otherwise: this many classes with the highest error
PAIRS = 20  # most confused pairs listed


def confusion_matrix(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C, C) int64 counts: [true class, top-1 predicted class]."""
    c = probs.shape[1]
    pred = probs.argmax(1)
    return torch.bincount(labels * c + pred, minlength=c * c).view(c, c)


def per_class_error(matrix: torch.Tensor) -> torch.Tensor:
    """Top-1 error of each class (NaN for a class without images)."""
    counts = matrix.sum(1).double()
    return 1 - matrix.diagonal().double() / counts


def confused_pairs(matrix: torch.Tensor, n: int = PAIRS) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal counts as (true class, predicted class, images)."""
    off = matrix.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(min(n, off.numel()))
    c = matrix.shape[0]
    return [(int(f) // c, int(f) % c, int(v)) for v, f in zip(values, flat, strict=True) if v > 0]


def pairs_markdown(matrix: torch.Tensor, names: list[str]) -> str:
    """A markdown table of the most confused pairs."""
    counts = matrix.sum(1)
    lines = ["| true class | predicted as | images | of the class |", "|---|---|---:|---:|"]
    for t, p, v in confused_pairs(matrix):
        lines.append(f"| {names[t]} | {names[p]} | {v} | {100 * v / int(counts[t]):.1f} % |")
    return "\n".join(lines) + "\n"


def draw(matrix: torch.Tensor, names: list[str], title: str) -> Figure:
    """The matrix (rows normalised for colour, counts written) and the per-class errors."""
    c = matrix.shape[0]
    err = 100 * per_class_error(matrix).numpy()
    if c > MATRIX_CLASSES:
        order = np.argsort(-np.nan_to_num(err, nan=-1))[:WORST]
        fig = Figure(figsize=(8, 0.28 * len(order) + 1.5), layout="constrained")
        ax = fig.add_subplot()
        ax.barh(range(len(order)), err[order], color="tab:red")
        ax.set_yticks(range(len(order)), labels=[names[i] for i in order], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("top-1 error (%)")
        ax.set_title(f"the {len(order)} classes with the highest error (of {c})", fontsize=10)
        fig.suptitle(title, fontsize=11)
        return fig
    side = max(4.0, 0.42 * c + 2)
    fig = Figure(figsize=(side + 3.5, side), layout="constrained")
    ax, bars = fig.subplots(1, 2, width_ratios=(side, 3))
    counts = matrix.sum(1, keepdim=True).clamp_min(1)
    share = (matrix / counts).numpy()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.6, label="share of the true class")
    if c <= 15:
        for (i, j), v in np.ndenumerate(matrix.numpy()):
            if v:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(c), labels=names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), labels=names, fontsize=8)
    ax.set_xlabel("predicted class (top-1)")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (image counts)", fontsize=10)
    bars.barh(range(c), err, color="tab:red")
    bars.set_yticks(range(c), labels=[])
    bars.set_ylim(ax.get_ylim())
    bars.set_xlabel("top-1 error (%)")
    bars.set_title("per-class error", fontsize=10)
    for i, e in enumerate(err):
        bars.text(e, i, f" {e:.0f}", va="center", fontsize=7)
    bars.set_xlim(0, 118)  # room for the numbers
    bars.set_xticks([0, 25, 50, 75, 100])
    fig.suptitle(title, fontsize=11)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    """``confusion`` subcommand."""
    trained = trained_from_args(args)
    figure(trained, args.run, args.crops, not args.no_progress, args.out)
    return 0


def figure(
    trained: Trained,
    run: Path,
    views: int | None = None,
    progress: bool = True,
    out: Path | None = None,
) -> Path:
    """Draw ``trained``'s confusion on its validation split over ``views`` (default: the run's
    eval.views) and print the most confused pairs; returns the PNG written."""
    views = views or trained.cfg.eval.views
    split = trained.split()
    probs, labels = predict(trained.model, trained.loader(split, views), trained.rt, progress)
    matrix = confusion_matrix(probs, labels)
    names = short_names(trained.class_names)
    total = int(matrix.sum())
    info(
        f"top-1 error {100 * (1 - int(matrix.trace()) / total):.2f}% on {total} images "
        f"({views} view{'s' if views > 1 else ''})"
    )
    path = output_path(out, run, "confusion")
    table = pairs_markdown(matrix, names)
    if matrix.shape[0] > MATRIX_CLASSES:
        atomic.write_text(path.with_suffix(".md"), table)
        info(f"wrote {path.with_suffix('.md')}")
    info("most confused pairs:\n" + table)
    title = (
        f"{run}: {split.split} split, {total} images, "
        f"{views} view{'s' if views > 1 else ''} ({Path(trained.name).name})"
    )
    return save_figure(draw(matrix, names, title), path)
