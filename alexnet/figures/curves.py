"""Learning curves of one or more runs: loss and top-1 / top-5 error per epoch, lr cuts marked.

Read from each run's ``metrics.jsonl`` (the ``epoch`` rows ``alexnet.train`` writes after every
epoch). Training values are means over the epoch's steps (with dropout and augmentation on);
validation values use ``train.val_views`` views. An epoch that was recorded twice (a run
resumed after its epoch row was written but before its checkpoint) keeps its last row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from alexnet.errors import UserError
from alexnet.figures.common import output_path, save_figure

PANELS = (  # (title, y label, metric key without train_/val_, scale)
    ("loss", "cross-entropy", "loss", 1.0),
    ("top-1 error", "%", "top1_err", 100.0),
    ("top-5 error", "%", "top5_err", 100.0),
)


def curve_data(run: Path) -> dict[str, list[float]]:
    """Per-epoch values of a run: ``epoch`` (1 = after the first epoch), ``lr`` and the
    train_/val_ loss, top1_err and top5_err, in epoch order."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a run folder written by alexnet.train")
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("kind") == "epoch":
            rows[int(row["epoch"])] = row
    keys = ["lr"] + [f"{s}_{m}" for s in ("train", "val") for _, _, m, _ in PANELS]
    data: dict[str, list[float]] = {"epoch": [e + 1 for e in sorted(rows)]}
    for key in keys:
        data[key] = [float(rows[e][key]) for e in sorted(rows)]
    return data


def lr_cuts(data: dict[str, list[float]]) -> list[tuple[float, float, float]]:
    """(x, old lr, new lr) where the lr changed: x is the boundary before the new lr's epoch."""
    lr, epochs = data["lr"], data["epoch"]
    return [(epochs[i] - 1, lr[i - 1], lr[i]) for i in range(1, len(lr)) if lr[i] != lr[i - 1]]


def labels_for(runs: list[Path]) -> list[str]:
    """Short labels: folder names, or whole paths where two runs share a name."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else str(r) for r in runs]


def draw(runs: list[Path], title: str | None = None) -> Figure:
    """Three panels (loss, top-1, top-5 error), one colour per run, validation dashed."""
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    last = 1
    for k, (run, label) in enumerate(zip(runs, labels_for(runs), strict=True)):
        colour = f"C{k % 10}"  # matplotlib's default cycle
        data = curve_data(run)
        last = max([last, *data["epoch"]])
        for ax, (_, _, metric, scale) in zip(axes, PANELS, strict=True):
            for split, style in (("train", "-"), ("val", "--")):
                values = [scale * v for v in data[f"{split}_{metric}"]]
                (line,) = ax.plot(data["epoch"], values, style, color=colour, marker=".")
                line.set_label(label if split == "train" else f"_{label} val")  # one per run
                line.set_gid(f"{run}|{split}_{metric}")
            for x, old, new in lr_cuts(data):
                ax.axvline(x, color=colour, linestyle=":", linewidth=1)
                if ax is axes[0]:
                    ax.annotate(
                        f"lr {old:g}→{new:g}",
                        (x, 1),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        va="top",
                        ha="right",
                        fontsize=7,
                        color=colour,
                    )
    for ax, (name, unit, _, _) in zip(axes, PANELS, strict=True):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
    axes[-1].legend(fontsize=8, loc="upper right")
    what = "training (solid) and validation (dashed) per epoch; dotted: lr cuts"
    fig.suptitle(f"{title or ', '.join(labels_for(runs))}\n{what}", fontsize=11)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="run folders (holding metrics.jsonl)")
    p.add_argument("--out", type=Path, help="PNG to write (default: FIRST_RUN/figures/curves.png)")
    p.add_argument("--title", help="figure title (default: the run names)")


def run(args: argparse.Namespace) -> int:
    """``curves`` subcommand."""
    figure(args.runs, args.title, args.out)
    return 0


def figure(runs: list[Path], title: str | None = None, out: Path | None = None) -> Path:
    """Draw the learning curves of ``runs``; returns the PNG written (default: in the first)."""
    return save_figure(draw(runs, title), output_path(out, runs[0], "curves"))
