"""The paper's Fig. 4 (left): validation images with the network's five most probable classes.

As in the paper, the correct label is written under each image and its bar is red when it is
among the five. Probabilities are the evaluator's (``training.engine.predict``: the softmax of
each view, averaged over the views, §4.1).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from alexnet.figures.common import (
    PHOTO_DPI,
    Trained,
    add_model_arguments,
    image_axes,
    output_path,
    pictures,
    save_figure,
    short_names,
    spread,
    subset,
    trained_from_args,
)
from alexnet.log import info
from alexnet.training.engine import predict

TOP = 5  # §6: "the five labels considered most probable by the model"
COLUMNS = 4


@dataclass(frozen=True)
class Shown:
    """One image of the figure: its place in the split, its label and its top classes."""

    index: int
    label: int
    classes: list[int]  # most probable first
    probs: list[float]


def choose(
    trained: Trained,
    split_name: str,
    n: int,
    errors_only: bool = False,
    views: int = 1,
    show_progress: bool = True,
) -> list[Shown]:
    """``n`` images spread evenly over the split (or over its top-1 errors) and their top 5."""
    split = trained.split(split_name)
    if errors_only:
        probs, labels = predict(
            trained.model, trained.loader(split, views), trained.rt, show_progress
        )
        wrong = (probs.argmax(1) != labels).nonzero().flatten().tolist()
        indices = [wrong[i] for i in spread(len(wrong), n)]
        probs, labels = probs[indices], labels[indices]
    else:
        indices = spread(len(split), n)
        batches = trained.loader(subset(split, indices), views)
        probs, labels = predict(trained.model, batches, trained.rt, show_progress)
    return top_classes(probs, labels, indices)


def top_classes(probs: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]) -> list[Shown]:
    """The ``TOP`` most probable classes of each row of ``probs`` (fewer if there are fewer)."""
    values, classes = probs.topk(min(TOP, probs.shape[1]), dim=1)
    return [
        Shown(int(i), int(y), c.tolist(), v.tolist())
        for i, y, c, v in zip(indices, labels, classes, values, strict=True)
    ]


def draw(images: torch.Tensor, shown: Sequence[Shown], names: Sequence[str], title: str) -> Figure:
    """Each image above its top-5 bars; the correct class under the image, its bar red."""
    names = short_names(names)
    cols = min(COLUMNS, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(2.7 * cols, 3.9 * rows + 0.5), layout="constrained")
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[2.4, 1.5] * rows)
    for k, (image, s) in enumerate(zip(images, shown, strict=True)):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        correct = s.classes[0] == s.label
        image_axes(ax, image)
        ax.set_xlabel(names[s.label], fontsize=9, fontweight="bold")
        bars = fig.add_subplot(grid[2 * r + 1, c])
        bars.set_label(f"top classes of image {s.index}")
        colours = ["lightcoral" if cls == s.label else "lightsteelblue" for cls in s.classes]
        bars.barh(range(len(s.classes)), s.probs, color=colours, height=0.8)
        for y, p in enumerate(s.probs):
            bars.text(0.98, y, f"{100 * p:.0f}%", ha="right", va="center", fontsize=7)
        bars.set_yticks(range(len(s.classes)), labels=[names[cls] for cls in s.classes])
        bars.tick_params(axis="y", length=0, pad=-4, labelsize=8)
        for label in bars.get_yticklabels():
            label.set_horizontalalignment("left")
        bars.set_xlim(0, 1)
        bars.set_xticks([0, 0.5, 1], labels=["0", "50%", "100%"], fontsize=7)
        bars.invert_yaxis()  # most probable on top
        verdict = ("top-1 correct", "tab:green") if correct else ("top-1 wrong", "tab:red")
        bars.set_title(verdict[0], fontsize=7, color=verdict[1])
    fig.suptitle(title, fontsize=11)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-n", "--images", type=int, default=8, help="images to show (default 8)")
    p.add_argument("--errors-only", action="store_true", help="only images whose top-1 is wrong")
    p.add_argument("--split", help="split to draw from (default: the run's data.val_split)")


def run(args: argparse.Namespace) -> int:
    """``predictions`` subcommand."""
    trained = trained_from_args(args)
    options = (args.images, args.errors_only, args.split, args.crops, not args.no_progress)
    figure(trained, args.run, *options, out=args.out)
    return 0


def figure(
    trained: Trained,
    run: Path,
    images: int = 8,
    errors_only: bool = False,
    split: str | None = None,
    views: int | None = None,
    progress: bool = True,
    out: Path | None = None,
) -> Path | None:
    """Draw ``images`` images of ``split`` (default: validation) with ``trained``'s top 5 over
    ``views`` (default: the run's eval.views); returns the PNG written, None if none fits."""
    split = split or trained.cfg.data.val_split
    views = views or trained.cfg.eval.views
    shown = choose(trained, split, images, errors_only, views, progress)
    if not shown:
        info("no image to show (no top-1 errors?)")
        return None
    photos = pictures(trained.split(split), [s.index for s in shown])
    which = "top-1 errors" if errors_only else "images"
    title = (
        f"{run}: validation {which} and the network's top {TOP} "
        f"({views} view{'s' if views > 1 else ''}, softmax averaged)"
    )
    fig = draw(photos, shown, trained.class_names, title)
    return save_figure(fig, output_path(out, run, "predictions"), PHOTO_DPI)
