"""``scripts/ablations.py`` end to end on the tiny set: two ablations and the baseline, each
trained, evaluated and tabulated; a second call skips finished runs and never retrains."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import ROOT

TINY = (
    "train.batch_size=8",
    "train.steps_per_epoch=2",
    "train.epochs=1",
    "train.checkpoint_every=0",
    "data.workers=0",
    "eval.batch_size=8",
    "run.tensorboard=false",
)
NAMES = ("baseline", "no_lrn", "non_overlapping_pool")


@pytest.fixture(scope="module")
def ablations():
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "scripts" / "ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def argv(data: Path, runs: Path, only: str = "no_lrn,non_overlapping_pool") -> list[str]:
    out = ["--data", str(data), "--runs", str(runs), "--only", only, "--crops", "1"]
    for s in TINY:
        out += ["--set", s]
    return [*out, "--no-progress"]


def test_ablations_train_evaluate_tabulate_then_skip(ablations, prepared_tiny, tmp_path, capsys):
    runs = tmp_path / "ablations"
    assert ablations.main(argv(prepared_tiny, runs)) == 0
    configs = {n: yaml.safe_load((runs / n / "config.yaml").read_text()) for n in NAMES}
    assert configs["baseline"]["model"]["lrn"]["enabled"] is True
    assert configs["no_lrn"]["model"]["lrn"]["enabled"] is False
    assert configs["non_overlapping_pool"]["model"]["pooling"] == "non_overlapping"
    assert all(
        c["model"]["num_classes"] == 4 and c["train"]["epochs"] == 1 for c in configs.values()
    )
    rows = {r.split("|")[1].strip(): r for r in (runs / "ablations.md").read_text().splitlines()}
    for name in NAMES:
        result = json.loads((runs / name / "eval.json").read_text())["results"]["1"]
        cells = [c.strip() for c in rows[name].split("|")]
        assert cells[3] == f"{100 * result['top1_err']:.2f} / —"
        assert cells[4] == f"{100 * result['top5_err']:.2f} / —"
    assert rows["no_lrn"].split("|")[6].strip().startswith("+1.4 / +1.2")  # paper §3.3
    assert rows["non_overlapping_pool"].split("|")[6].strip().startswith("+0.4 / +0.3")  # §3.4
    with Image.open(runs / "curves.png") as image:
        assert image.format == "PNG" and image.width > 1000
    capsys.readouterr()

    last = {n: (runs / n / "last.pt").stat().st_mtime_ns for n in NAMES}
    (runs / "baseline" / "eval.json").unlink()  # trained but not evaluated: evaluate only
    assert ablations.main(argv(prepared_tiny, runs)) == 0
    err = capsys.readouterr().err
    assert err.count("exists, skipped") == 2 and "training into" not in err
    assert (runs / "baseline" / "eval.json").is_file()
    assert {n: (runs / n / "last.pt").stat().st_mtime_ns for n in NAMES} == last


def test_an_unknown_ablation_is_one_clear_error(ablations, prepared_tiny, tmp_path, capsys):
    assert ablations.main(argv(prepared_tiny, tmp_path / "r", only="no_lrm")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_lrm" in err and "no_lrn" in err
    assert not (tmp_path / "r").exists()  # checked before any work
