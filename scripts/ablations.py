"""Train and evaluate the baseline and every ablation in configs/ablations/, then tabulate them.

Each run gets its own folder, ``RUNS/<name>`` (``baseline`` and one per ablation file). A run
whose ``eval.json`` exists is skipped; an unfinished one is resumed from its ``last.pt``;
nothing is ever deleted. At the end ``RUNS/ablations.md`` holds the table (errors with 1 and
10 crops, differences from the baseline, the paper's reported differences) and
``RUNS/curves.png`` the overlaid learning curves.

An ablation file is a diff on the base config (``--config``, default: the paper's recipe):
its values are applied as ``--set`` overrides after the base, before your own ``--set``
overrides, which apply to every run. Its ``run`` section is ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from alexnet import atomic, cli
from alexnet.config import Config, load_config
from alexnet.data.packed import read_meta
from alexnet.errors import UserError, report_user_errors
from alexnet.figures import curves, table
from alexnet.inference.evaluation import evaluate_models
from alexnet.inference.trained import load_trained
from alexnet.log import info
from alexnet.training.checkpoint import BEST, LAST
from alexnet.training.loop import run

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "ablations"
EPILOG = """examples:
  python scripts/ablations.py --data data/ilsvrc2012 --runs runs/ablations
      the paper's recipe on ImageNet: the baseline and every ablation, one after another
  python scripts/ablations.py --data data/synthetic-prepared --config configs/demo.yaml \\
      --runs runs/demo-ablations --only no_lrn,non_overlapping_pool,one_tower
  python scripts/ablations.py --data data/ilsvrc2012 --set parallel.mode=two_device
Re-running the same command skips finished runs and resumes unfinished ones."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python scripts/ablations.py",
        "Train + evaluate the baseline and the configs/ablations/ runs, then write the "
        "ablation table and the overlaid learning curves.",
        EPILOG,
    )
    p.add_argument("--data", type=Path, required=True, help="prepared data set (alexnet.prepare)")
    cli.add_config_options(p, what="the paper's recipe; --set applies to every run")
    p.add_argument(
        "--runs",
        type=Path,
        default=Path("runs/ablations"),
        help="output folder (default runs/ablations)",
    )
    p.add_argument(
        "--only", help="comma-separated ablation names (files in configs/ablations/); default: all"
    )
    p.add_argument(
        "--crops",
        type=int,
        choices=(1, 10),
        action="append",
        help="views to evaluate (repeatable; default 1 and 10)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def ablation_overrides(path: Path) -> list[str]:
    """An ablation file's values as ``KEY=VALUE`` overrides (JSON values, which YAML reads)."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif not prefix.startswith("run."):
            out.append(f"{prefix}={json.dumps(value)}")

    walk("", yaml.safe_load(path.read_text()) or {})
    return out


def configs(args: argparse.Namespace) -> dict[str, Config]:
    """Run name -> its config, baseline first; every run's config is checked before any work."""
    files = {p.stem: p for p in sorted(ABLATIONS.glob("*.yaml"))}
    names = list(files)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in files]
        if unknown:
            raise UserError(
                f"--only: no ablation named {', '.join(unknown)}; choose from {', '.join(files)}"
            )
    classes = len(read_meta(args.data)["classes"])
    common = [f"data.root={args.data}", f"model.num_classes={classes}"]
    runs = {"baseline": [*common, *args.set]}
    for name in names:
        runs[name] = [*common, *ablation_overrides(files[name]), *args.set]
    return {
        name: load_config(args.config, [*overrides, f"run.dir={args.runs / name}"])
        for name, overrides in runs.items()
    }


def finished_training(run: Path) -> bool:
    """True when the run's last epoch row ends training (all epochs, or the plateau rule's stop)."""
    if not (run / LAST).is_file() or not (run / "metrics.jsonl").is_file():
        return False
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    if not epochs:
        return False
    total = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
    return epochs[-1].get("event") == "stop" or int(epochs[-1]["epoch"]) + 1 >= total


def run_one(args: argparse.Namespace, name: str, cfg: Config) -> int:
    """Train (or resume) and evaluate one run; 0 when its eval.json is written."""
    folder, progress = cfg.run.dir, not args.no_progress
    if (folder / "eval.json").is_file():
        info(f"{name}: {folder / 'eval.json'} exists, skipped")
        return 0
    if not finished_training(folder):
        info(f"{name}: training into {folder}")
        code = run(cfg, "auto" if (folder / LAST).is_file() else None, progress)
        if code:
            return code
    trained = load_trained(folder / BEST)
    report = evaluate_models([trained], trained.split(), args.crops or (1, 10), progress)
    atomic.write_json(folder / "eval.json", report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    runs = configs(args)
    for name, cfg in runs.items():
        code = run_one(args, name, cfg)
        if code:
            info(f"{name}: stopped with exit code {code}; re-run the same command to continue")
            return code
    folders = [args.runs / name for name in runs]
    text = table.markdown(table.table_rows(folders, folders[0]))
    atomic.write_text(args.runs / "ablations.md", text)
    print(text, end="")
    info(f"wrote {args.runs / 'ablations.md'}")
    curves.figure(folders, f"{args.runs.name}: baseline and ablations", args.runs / "curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
