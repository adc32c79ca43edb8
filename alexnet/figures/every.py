"""Every figure of one run (``python -m alexnet.figures all``), its network loaded once."""

from __future__ import annotations

from pathlib import Path

from alexnet.figures import confusion, curves, kernels, neighbours, predictions
from alexnet.figures.common import run_network
from alexnet.log import info

ALL = ("kernels", "predictions", "neighbours", "curves", "confusion")  # what `all` draws


def draw_all(
    run: Path,
    device: str | None = None,
    views: int | None = None,
    progress: bool = True,
    workers: int | None = None,
    batch_size: int | None = None,
) -> list[Path]:
    """Each figure of ``ALL`` with its defaults into ``run/figures``, the figures that run the
    network over ``views`` (default: the run's eval.views); returns the PNGs written."""
    trained = run_network(run, device=device, workers=workers, batch_size=batch_size)
    written = [
        kernels.figure(run),
        predictions.figure(trained, run, views=views, progress=progress),
        neighbours.figure(trained, run, progress=progress),
        curves.figure([run]),
        confusion.figure(trained, run, views=views, progress=progress),
    ]
    info(f"figures of {run}: {run / 'figures'}/{{{','.join(ALL)}}}.png")
    return [p for p in written if p is not None]
