"""A markdown table of runs' errors, their difference from a baseline, and the paper's ablations.

Each run's errors come from its ``eval.json`` (``python -m alexnet.eval --crops 1 --crops 10
--json RUN/eval.json``). What a run changes is read from the difference between its
``config.yaml`` and the baseline's; when that is one of the paper's ablations, the table shows
the paper's reported difference beside ours (§3.2, §3.3, §3.4, §4.1; the paper's figures are
for ILSVRC with 10-patch testing, ``alexnet/paper.py``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alexnet import atomic, paper
from alexnet.errors import UserError
from alexnet.figures.curves import labels_for
from alexnet.log import info

# (config key, its value in the ablated run, what the run lacks, the paper's (top-1, top-5) gain)
PAPER_ABLATIONS = (
    ("model.lrn.enabled", False, "LRN, §3.3", paper.ABLATION_LRN),
    (
        "model.pooling",
        "non_overlapping",
        "overlapping pooling, §3.4",
        paper.ABLATION_OVERLAPPING_POOL,
    ),
    ("model.arch", "one_tower", "two towers, §3.2", paper.ABLATION_TWO_TOWERS),
    ("augment.lighting", "off", "PCA lighting, §4.1: top-1 over 1", paper.ABLATION_LIGHTING),
)
CROPS = ("1", "10")


@dataclass(frozen=True)
class Row:
    """One run of the table; errors are fractions keyed by crops ("1", "10"), None if absent."""

    label: str
    changes: list[str]  # "key=value" where the run's config differs from the baseline's
    top1: dict[str, float | None]
    top5: dict[str, float | None]
    paper: tuple[str, tuple[float | None, float | None]] | None  # the paper's, if it has one


def read_errors(run: Path) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Top-1 and top-5 error per number of crops, from ``run/eval.json``."""
    path = run / "eval.json"
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: evaluate the run first, e.g. `python -m alexnet.eval "
            f"--checkpoint {run / 'best.pt'} --crops 1 --crops 10 --json {path}`"
        )
    results = json.loads(path.read_text()).get("results", {})
    top1 = {c: results[c]["top1_err"] if c in results else None for c in CROPS}
    top5 = {c: results[c]["top5_err"] if c in results else None for c in CROPS}
    return top1, top5


def flat_config(run: Path) -> dict[str, Any]:
    """``run/config.yaml`` as {"section.key": value}, without the ``run`` section."""
    path = run / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} does not exist: give run folders written by alexnet.train")
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif not prefix.startswith("run."):
            out[prefix] = value

    walk("", yaml.safe_load(path.read_text()))
    return out


def table_rows(runs: list[Path], baseline: Path) -> list[Row]:
    """The table's rows: the baseline first, then the other runs in the order given."""
    base = flat_config(baseline)
    ordered = [baseline] + [r for r in runs if r.resolve() != baseline.resolve()]
    rows = []
    for run, label in zip(ordered, labels_for(ordered), strict=True):
        cfg = flat_config(run)
        changed = sorted(k for k in cfg.keys() | base.keys() if cfg.get(k) != base.get(k))
        changes = [f"{k}={json.dumps(cfg.get(k))}" for k in changed]
        rows.append(Row(label, changes, *read_errors(run), paper_ablation(cfg, changed)))
    return rows


Gain = tuple[float | None, float | None]  # points of top-1, top-5 error; None = not stated


def paper_ablation(cfg: dict[str, Any], changed: list[str]) -> tuple[str, Gain] | None:
    """(what the run lacks, the paper's gain) if the run is one of the paper's ablations."""
    for key, value, what, gain in PAPER_ABLATIONS:
        if key in changed and cfg.get(key) == value:
            return what, gain
    return None


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _delta(x: float | None, base: float | None) -> str:
    return "—" if x is None or base is None else f"{100 * (x - base):+.2f}"


def markdown(rows: list[Row]) -> str:
    """The table as markdown; differences in points of error, on 10 crops where both have them."""
    head = (
        "| run | differs from the baseline in | top-1 err % (1 / 10 crops) | "
        "top-5 err % (1 / 10 crops) | Δ top-1 / top-5 (points) | paper's Δ without the feature |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    base = rows[0]
    for i, r in enumerate(rows):
        crops = "10" if r.top1["10"] is not None and base.top1["10"] is not None else "1"
        if i == 0:
            delta, changes, theirs = "baseline", "—", "—"
        else:
            delta = (
                f"{_delta(r.top1[crops], base.top1[crops])} / "
                f"{_delta(r.top5[crops], base.top5[crops])} ({crops} crop{'s' * (crops == '10')})"
            )
            changes = ", ".join(f"`{c}`" for c in r.changes) or "nothing"
            theirs = "—"
            if r.paper is not None:
                what, (t1, t5) = r.paper
                theirs = " / ".join("—" if v is None else f"+{v:.1f}" for v in (t1, t5))
                theirs += f" ({what})"
        lines.append(
            f"| {r.label} | {changes} | {_pct(r.top1['1'])} / {_pct(r.top1['10'])} | "
            f"{_pct(r.top5['1'])} / {_pct(r.top5['10'])} | {delta} | {theirs} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="run folders holding eval.json")
    p.add_argument("--baseline", type=Path, help="the run to compare with (default: the first)")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")


def run(args: argparse.Namespace) -> int:
    """``table`` subcommand: print the table (and write it with ``--out``)."""
    text = markdown(table_rows(args.runs, args.baseline or args.runs[0]))
    print(text, end="")
    if args.out:
        atomic.write_text(args.out, text)
        info(f"wrote {args.out}")
    return 0
