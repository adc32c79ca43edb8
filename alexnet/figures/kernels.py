"""The paper's Fig. 3: conv1's kernels, tower A's above tower B's, and how colourful each tower is.

§6.1: "the kernels on GPU 1 are largely color-agnostic, while the kernels on on GPU 2 are
largely color-specific". The number that checks it, per kernel, is the fraction of its energy
off the grey axis: ``|w - g|^2 / |w|^2`` where ``g`` holds, at every pixel, the mean of ``w``'s
three colour channels. A kernel that weighs R, G and B alike scores 0; one that sums to zero
over the channels at every pixel (pure colour opponency) scores 1; random noise scores 2/3 on
average (two of the three colour directions are off grey), which is where training starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from alexnet import paper
from alexnet.figures.common import find_checkpoint, output_path, save_figure
from alexnet.log import info
from alexnet.training.checkpoint import load_checkpoint

RANDOM_FRACTION = 2 / 3  # expected fraction for i.i.d. noise kernels: 2 of 3 colour directions
COLUMNS = 16  # kernels per row: each tower's 48 kernels in three rows


def colour_fraction(weight: torch.Tensor) -> torch.Tensor:
    """Per kernel, the fraction of its energy off the grey axis, in float64.

    Args:
        weight: conv1's weight (K, 3, h, w).

    Returns:
        (K,) values in [0, 1]; 0 for a kernel that treats the colour channels alike.
    """
    w = weight.detach().double().cpu().flatten(2)  # (K, 3, h*w)
    off_grey = w - w.mean(dim=1, keepdim=True)
    total = w.square().sum(dim=(1, 2))
    return off_grey.square().sum(dim=(1, 2)) / total.clamp_min(torch.finfo(torch.float64).tiny)


def towers(weight: torch.Tensor, arch: str) -> list[tuple[str, torch.Tensor]]:
    """(name, kernels) per tower: the two-tower net's first 48 kernels are tower A's (§3.2)."""
    if arch != "two_tower":
        return [(f"one tower ({arch})", weight)]
    half = weight.shape[0] // paper.TOWERS
    return [("tower A (paper: GPU 1)", weight[:half]), ("tower B (paper: GPU 2)", weight[half:])]


def kernel_grid(weight: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> np.ndarray:
    """Kernels (K, 3, h, w) scaled by (w - lo) / (hi - lo) into one (H, W, 3) image, white gaps."""
    k, _, h, w = weight.shape
    rows = -(-k // COLUMNS)
    grid = np.ones((rows * (h + 1) + 1, COLUMNS * (w + 1) + 1, 3))
    scaled = ((weight.double() - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    for i, kernel in enumerate(scaled.permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, COLUMNS)
        grid[1 + r * (h + 1) : (r + 1) * (h + 1), 1 + c * (w + 1) : (c + 1) * (w + 1)] = kernel
    return grid


def draw(weight: torch.Tensor, arch: str, title: str, per_kernel: bool = False) -> Figure:
    """The kernels of each tower and a histogram of their colour fractions."""
    groups = towers(weight.detach().double().cpu(), arch)
    fig = Figure(figsize=(11, 2.3 * len(groups) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(groups), 2, width_ratios=(3.2, 1))
    together = (weight.min().double(), weight.max().double())  # the paper scales all 96 alike
    hist = fig.add_subplot(grid[:, 1])
    bins = np.linspace(0, 1, 21)
    for row, ((name, w), colour) in enumerate(
        zip(groups, ("tab:blue", "tab:orange"), strict=False)
    ):
        if per_kernel:
            lo, hi = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
        else:
            lo, hi = together
        fractions = colour_fraction(w).numpy()
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(kernel_grid(w, lo, hi), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(
            f"{name}: {len(w)} kernels, mean colour fraction {fractions.mean():.2f}",
            fontsize=10,
            loc="left",
        )
        hist.hist(fractions, bins=bins, alpha=0.6, color=colour, label=name.split(" (")[0])
        hist.axvline(fractions.mean(), color=colour, linewidth=2)
    hist.axvline(RANDOM_FRACTION, color="grey", linestyle=":", label="random kernels")
    hist.set_xlim(0, 1)
    hist.set_ylim(0, 1.4 * hist.get_ylim()[1])  # room for the legend above the bars
    hist.set_xlabel("energy off the grey axis (per kernel)")
    hist.set_ylabel("kernels")
    hist.set_title("colour specificity (lines: means)", fontsize=10)
    hist.legend(fontsize=8, loc="upper left")
    scaling = "each kernel scaled on its own" if per_kernel else "all kernels scaled together"
    fig.suptitle(f"{title}\nconv1 kernels (11x11x3), {scaling}", fontsize=11)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (reads best.pt, else last.pt)")
    p.add_argument("--checkpoint", type=Path, help="a .pt file instead of the run's")
    p.add_argument(
        "--per-kernel",
        action="store_true",
        help="scale each kernel to its own range (default: all together, as the paper)",
    )
    p.add_argument("--out", type=Path, help="PNG to write (default: RUN/figures/)")


def run(args: argparse.Namespace) -> int:
    """``kernels`` subcommand."""
    figure(args.run, args.checkpoint, args.per_kernel, args.out)
    return 0


def figure(
    run: Path, checkpoint: Path | None = None, per_kernel: bool = False, out: Path | None = None
) -> Path:
    """Draw conv1's kernels of ``run`` (``checkpoint``, else best.pt, else last.pt) and print
    each tower's colour fraction; returns the PNG written."""
    path = checkpoint or find_checkpoint(run)
    state = load_checkpoint(path)
    weight = state["model"]["conv1.weight"]
    arch = state["config"]["model"]["arch"]
    for name, w in towers(weight, arch):
        f = colour_fraction(w)
        info(
            f"{name}: colour fraction mean {f.mean():.3f}, median {f.median():.3f} "
            f"(0 = grey, {RANDOM_FRACTION:.2f} = random, 1 = pure colour opponency)"
        )
    title = f"{run} ({path.name}, epochs trained: {state.get('epoch', '?')})"
    fig = draw(weight, arch, title, per_kernel=per_kernel)
    return save_figure(fig, output_path(out, run, "kernels"))
