"""What the figures share: a run's trained network, a few of its images, class names, PNG files.

A figure reads a run folder (``config.yaml``, ``metrics.jsonl``, ``best.pt`` or ``last.pt``,
``eval.json``) and writes ``<run>/figures/<name>.png``. Figures are drawn on a plain
``matplotlib.figure.Figure`` (Agg canvas, no pyplot state) and saved atomically.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alexnet import atomic, cli
from alexnet.data.packed import PackedSplit
from alexnet.data.transforms import center_crop
from alexnet.errors import UserError
from alexnet.inference.trained import Trained, load_trained
from alexnet.log import info
from alexnet.training.checkpoint import BEST, LAST

if TYPE_CHECKING:  # matplotlib is imported by the figures themselves, when they are drawn
    from matplotlib.figure import Figure

DPI = 150  # sharp on a screen, a few hundred kB per figure
PHOTO_DPI = 100  # figures made of photos: about their own pixels, 1-2 MB
FIGURES = "figures"  # <run>/figures/<name>.png


def find_checkpoint(run: Path) -> Path:
    """``run/best.pt``, else ``run/last.pt``."""
    for name in (BEST, LAST):
        if (run / name).is_file():
            return run / name
    raise UserError(f"{run} holds no {BEST} or {LAST}: give a run folder written by alexnet.train")


def subset(split: PackedSplit, indices: Sequence[int]) -> PackedSplit:
    """The records ``indices`` of ``split`` as a split of their own (nothing is copied on disk)."""
    out = copy.copy(split)
    out.index = split.index[np.asarray(indices, dtype=np.int64)]
    out.labels = torch.from_numpy(out.index[:, 3].copy())
    out._maps = {}
    return out


def spread(count: int, n: int) -> list[int]:
    """``n`` evenly spaced positions in ``range(count)`` (all of them if n >= count)."""
    if n >= count:
        return list(range(count))
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, n)})


def pictures(split: PackedSplit, indices: Sequence[int], size: int = 224) -> torch.Tensor:
    """The central ``size`` crop of stored images, uint8 (n, 3, size, size), for display."""
    images = torch.stack([split.image(int(i)) for i in indices])
    return center_crop(images, size)


def short_names(names: Sequence[str]) -> list[str]:
    """The first synonym of each name ("tench, Tinca tinca" -> "tench"); names that would then
    coincide (ImageNet's two "crane"s) keep their second synonym or their number."""
    first = [n.split(",")[0].strip() for n in names]
    out = []
    for i, (name, short) in enumerate(zip(names, first, strict=True)):
        if first.count(short) > 1:
            parts = [p.strip() for p in name.split(",")]
            short = f"{short} ({parts[1]})" if len(parts) > 1 else f"{short} ({i})"
        out.append(short)
    return out


def output_path(out: Path | None, run: Path, name: str) -> Path:
    """``out``, or ``<run>/figures/<name>.png``."""
    return out if out is not None else run / FIGURES / f"{name}.png"


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG, atomically; returns ``path``."""
    with atomic.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    info(f"wrote {path}")
    return path


def figure_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """``fig`` rendered to an (H, W, 3) uint8 RGB array (for TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def image_axes(ax, image: torch.Tensor, title: str = "", colour: str = "black") -> None:
    """Show a uint8 (3, H, W) image without ticks, with a small title."""
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, color=colour)


def add_model_arguments(p: argparse.ArgumentParser, crops: bool = True) -> None:
    """Arguments of the figures that run the network: run, checkpoint, data, device, out."""
    p.add_argument("run", type=Path, help="run folder (reads best.pt, else last.pt)")
    p.add_argument("--checkpoint", type=Path, help="a .pt file instead of the run's best/last")
    p.add_argument("--data", type=Path, help="prepared data folder (default: the run's data.root)")
    if crops:
        p.add_argument(
            "--crops",
            type=int,
            choices=(1, 10),
            help="views per image, softmax averaged (default: the run's eval.views)",
        )
    p.add_argument("--out", type=Path, help="PNG to write (default: RUN/figures/NAME.png)")
    cli.add_inference_options(p, workers_help="loader processes (default: the run's)")


def run_network(
    run: Path,
    checkpoint: Path | None = None,
    device: str | None = None,
    data: Path | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
) -> Trained:
    """The network of ``run`` (``checkpoint``, else its best.pt, else last.pt); torchvision's
    weights are refused (they come with no training set to show)."""
    path = checkpoint or find_checkpoint(run)
    trained = load_trained(path, device, data=data, workers=workers, batch_size=batch_size)
    if trained.stats is None:
        raise UserError(f"{path} holds torchvision's weights: give a run written by alexnet.train")
    return trained


def trained_from_args(args: argparse.Namespace) -> Trained:
    """``run_network`` with the arguments of ``add_model_arguments``."""
    return run_network(
        args.run, args.checkpoint, args.device, args.data, args.workers, args.batch_size
    )
