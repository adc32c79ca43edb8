"""The paper's Fig. 4 (right): the training images nearest to validation images in fc7's space.

§6.1: "the feature activations induced by an image at the last, 4096-dimensional hidden layer";
images are near when the Euclidean distance between these vectors is small. The training set
is streamed through the network once and each query keeps a running top-k (its k smallest
distances so far), so memory stays at (queries x (k + batch)) distances whatever the size of
the training set (ImageNet's 1.28M x 4096 float32 features would be 21 GB). Each image is
represented by its centre crop.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

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
from alexnet.inference.features import layer_outputs
from alexnet.log import info

LAYER = "fc7"  # §6.1: the last 4096-dimensional hidden layer
NEIGHBOURS = 6  # Fig. 4 shows the six nearest training images


def stream_nearest(
    queries: torch.Tensor, batches: Iterable[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of the concatenated ``batches`` nearest to each query (Euclidean).

    Args:
        queries: (Q, D) vectors.
        batches: (B_i, D) blocks of the searched set, in order; row j of the whole set is
            row j - (B_0 + ... + B_{i-1}) of block i. Blocks are moved to the queries' device.
        k: neighbours per query (fewer if the set is smaller).

    Returns:
        distances (Q, k) ascending and their row numbers (Q, k) in the whole set.
    """
    best_d = queries.new_empty(len(queries), 0)
    best_i = torch.empty(len(queries), 0, dtype=torch.int64, device=queries.device)
    seen = 0
    for block in batches:
        block = block.to(queries.device, queries.dtype)
        # the direct formula: each distance independent of the block it arrives in
        d = torch.cdist(queries, block, compute_mode="donot_use_mm_for_euclid_dist")
        rows = torch.arange(seen, seen + len(block), device=queries.device).expand(len(queries), -1)
        d, i = torch.cat([best_d, d], 1), torch.cat([best_i, rows], 1)
        best_d, order = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
        best_i = i.gather(1, order)
        seen += len(block)
    return best_d, best_i


def nearest_training_images(
    trained: Trained, queries: list[int], k: int = NEIGHBOURS, show_progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """fc7 distances and indices of the ``k`` training images nearest to validation ``queries``."""
    rt = trained.rt
    val = subset(trained.split(trained.cfg.data.val_split), queries)
    q = torch.cat([f for f, _ in layer_outputs(trained.model, trained.loader(val), rt, LAYER)])
    train = trained.loader(trained.split(trained.cfg.data.train_split))
    blocks = (f for f, _ in layer_outputs(trained.model, train, rt, LAYER))
    bar = tqdm(
        blocks, total=len(train), desc="training set", unit="batch", disable=not show_progress
    )
    d, i = stream_nearest(q, bar, k)
    return d.cpu(), i.cpu()


def draw(
    queries: torch.Tensor,
    found: torch.Tensor,
    labels: tuple[list[int], torch.Tensor],
    distances: torch.Tensor,
    names: list[str],
    title: str,
) -> Figure:
    """One row per query: the query image, then its neighbours, nearest first.

    A neighbour's name is green when its class is the query's, red otherwise.
    """
    names = short_names(names)
    query_labels, found_labels = labels
    rows, k = found.shape[:2]
    fig = Figure(figsize=(1.55 * (k + 1) + 0.3, 1.75 * rows + 0.7), layout="constrained")
    grid = fig.add_gridspec(rows, k + 1, width_ratios=[1.15] + [1] * k)
    for r in range(rows):
        y = query_labels[r]
        ax = fig.add_subplot(grid[r, 0])
        image_axes(ax, queries[r], names[y])
        ax.set_ylabel("query", fontsize=8)
        for c in range(k):
            ax = fig.add_subplot(grid[r, c + 1])
            same = int(found_labels[r, c]) == y
            name = names[int(found_labels[r, c])]
            image_axes(ax, found[r, c], name, "tab:green" if same else "tab:red")
            ax.set_xlabel(f"d = {float(distances[r, c]):.3g}", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, crops=False)
    p.add_argument("-n", "--queries", type=int, default=5, help="validation images (default 5)")
    p.add_argument("-k", type=int, default=NEIGHBOURS, help="neighbours per query (default 6)")


def run(args: argparse.Namespace) -> int:
    """``neighbours`` subcommand."""
    trained = trained_from_args(args)
    figure(trained, args.run, args.queries, args.k, not args.no_progress, args.out)
    return 0


def figure(
    trained: Trained,
    run: Path,
    queries: int = 5,
    k: int = NEIGHBOURS,
    progress: bool = True,
    out: Path | None = None,
) -> Path:
    """Draw ``queries`` validation images, each with its ``k`` nearest training images in
    ``trained``'s fc7; returns the PNG written."""
    cfg = trained.cfg
    val, train = trained.split(cfg.data.val_split), trained.split(cfg.data.train_split)
    chosen = spread(len(val), queries)
    d, i = nearest_training_images(trained, chosen, k, progress)
    found = torch.stack([pictures(train, row.tolist()) for row in i])  # (Q, k, 3, 224, 224)
    same = (train.labels[i] == val.labels[chosen][:, None]).float().mean()
    info(f"{100 * float(same):.0f}% of the {i.numel()} neighbours share the query's class")
    labels = (val.labels[chosen].tolist(), train.labels[i])
    title = (
        f"{run}: validation images (left) and the {i.shape[1]} training images nearest "
        f"in {LAYER} (Euclidean; green: same class)"
    )
    fig = draw(pictures(val, chosen), found, labels, d, trained.class_names, title)
    return save_figure(fig, output_path(out, run, "neighbours"), PHOTO_DPI)
