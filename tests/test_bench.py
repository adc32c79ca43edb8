"""The benchmark commands run end to end on tiny inputs and print positive figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from alexnet.bench import __main__ as bench


def test_bench_train_times_synthetic_and_real_steps(
    prepared_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = ["model.num_classes=4", "train.batch_size=4", "data.workers=0"]
    args = ["train", "--steps", "2", "--warmup", "1", "--data"]
    for s in [*sets, f"data.root={prepared_tiny}"]:
        args += ["--set", s]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "images/s" in line]
    rates = [float(line.split(":")[-1].split()[0]) for line in lines]
    assert len(rates) == 2 and all(r > 0 for r in rates), out
