"""The benchmarks: what a measurement counts and when its clock runs (``train_rate`` against a
fake clock), the former-LRN net against the configured one, and smoke tests of the commands on
tiny inputs (they run, every net is timed in every round, the table prints the rounds' medians).
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest
import torch

from alexnet.bench import __main__ as bench
from alexnet.bench import train as bench_train
from alexnet.bench.train import Candidate, FormerLRN, build_candidate, train_rate
from alexnet.config import load_config
from alexnet.runtime import Runtime
from alexnet.training.engine import NonFiniteLoss

from conftest import assert_close_to_f64, image_batch

TINY = ["model.num_classes=4", "train.batch_size=4", "data.workers=0", "eval.batch_size=2"]


def bench_args(*args: str, sets: list[str] = TINY) -> list[str]:
    out = list(args)
    for s in sets:
        out += ["--set", s]
    return out


def table(out: str) -> dict[str, list[str]]:
    """The printed table's rows: first column -> the other columns."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["net", "images/s"])
    return {line.split()[0]: line.split()[1:] for line in lines[start + 1 :] if line.strip()}


def test_train_rate_counts_the_timed_steps_images_between_two_synchronisations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A net whose every forward takes 0.25 s on a fake clock: 3 steps of 4 images are 12
    images in 0.75 s, timed from a synchronisation before the first step to one after the
    last (a GPU's queued work counts), whatever the loader holds beyond the steps."""
    clock = [10.0]
    monkeypatch.setattr(bench_train.time, "perf_counter", lambda: clock[0])
    synced: list[float] = []
    monkeypatch.setattr(bench_train, "synchronize", lambda devices: synced.append(clock[0]))

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            clock[0] += 0.25
            return self.fc(x.mean((2, 3)))

    net = Slow()
    rt = Runtime("single", (torch.device("cpu"),))
    candidate = Candidate(net, torch.optim.SGD(net.parameters(), lr=0.1), rt)
    batches = iter([(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))] * 5)
    assert train_rate(candidate, batches, steps=3) == pytest.approx(12 / 0.75)
    assert synced == [10.0, 10.75]
    assert len(list(batches)) == 2  # the timed steps took exactly 3 batches


def test_bench_train_compares_nets_round_by_round(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures_file = tmp_path / "train.json"
    args = ["train", "--compare", "torchvision", "--compare", "no_lrn", "--data"]
    args += ["--steps", "1", "--rounds", "2", "--warmup", "1", "--json", str(figures_file)]
    assert bench.main(bench_args(*args, sets=[*TINY, f"data.root={prepared_tiny}"])) == 0
    out = capsys.readouterr().out
    figures = json.loads(figures_file.read_text())
    rounds = figures["rounds"]
    assert list(rounds) == ["configured", "torchvision", "no_lrn"]
    assert all(len(r) == 2 and min(r) > 0 for r in rounds.values())
    rows = table(out.split("training step, cpu loader")[0])
    base = statistics.median(rounds["torchvision"])
    for name, r in rounds.items():
        median, slowest, fastest, ratio = rows[name]
        assert float(median) == pytest.approx(statistics.median(r), abs=0.051)
        assert (float(slowest), float(fastest)) == pytest.approx((min(r), max(r)), abs=0.051)
        assert float(ratio.rstrip("x")) == pytest.approx(statistics.median(r) / base, abs=0.0051)
    assert figures["real_data"] > 0 and "cpu loader" in out


def test_former_lrn_net_is_the_same_net() -> None:
    """``--compare former_lrn`` times the configured net, same weights, with the former LRN."""
    cfg = load_config(None, ["model.num_classes=4"])
    rt = Runtime("single", (torch.device("cpu"),))
    ours, former = (build_candidate(n, cfg, rt).module.eval() for n in ("configured", "former_lrn"))
    assert isinstance(former.lrn1, FormerLRN) and isinstance(former.lrn2, FormerLRN)
    x = image_batch(2)
    with torch.no_grad():
        assert_close_to_f64(former(x), copy.deepcopy(ours).double()(x.double()))


def test_bench_eval_times_ten_view_batches(capsys: pytest.CaptureFixture[str]) -> None:
    args = bench_args("eval", "--steps", "1", "--rounds", "2", "--warmup", "0")
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "2 images x 10 views" in out and "evaluation, 10 views per image" in out
    assert float(table(out)["configured"][0]) > 0


def test_bench_lrn_times_both_implementations(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["lrn", "--shape", "2,12,5,5", "--rounds", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("implementation"))
    names = ["former LRN", "LRN op", "ReLU + former LRN", "LRN op, ReLU fused"]
    timings = {line[:20].strip(): line[20:].split() for line in out[start + 1 :]}
    assert list(timings) == names
    assert all(float(t[0]) > 0 for t in timings.values())
    assert timings["LRN op"][1].endswith("x") and timings["LRN op, ReLU fused"][1].endswith("x")


def test_bench_prepare_times_the_steps_and_both_sources(
    prepared_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stage rates, the archive and folder paths (their outputs equal), and projections
    that are the image count over rate x cores."""
    photos = prepared_tiny.parent / "src" / "train"  # 4 classes x 12 generated JPEGs
    args = ["prepare", "--photos", str(photos), "--rounds", "2", "--workers", "1"]
    assert bench.main([*args, "--classes", "3", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines()}
    assert all(float(rows[stage][0]) > 0 for stage in ("decode", "resize", "encode"))
    assert float(rows["archive"][0]) > 0 and float(rows["folders"][0]) > 0
    assert "photos: 20 from" in out and "same output: True" in out
    for line in [ln for ln in out.splitlines() if ln.startswith("from ")]:
        rate = float(line.split("(")[-1].split()[0])
        hours = [float(h) for h in line.split("cores ")[1:] for h in h.split()[:1]]
        expected = [1_331_167 / (rate * cores) / 3600 for cores in (8, 16)]
        assert hours == pytest.approx(expected, rel=0.01, abs=0.006)


def test_bench_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(bench_args("train", "--steps", "0")) == 2
    assert bench.main(["lrn", "--shape", "2,13,5,5"]) == 2  # 13 maps do not split in 2 towers
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_every_net_is_timed_at_a_tiny_lr_and_a_non_finite_loss_names_the_net(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(None, ["model.num_classes=4"])
    rt = Runtime("single", (torch.device("cpu"),))
    for name in ("configured", "torchvision"):
        groups = build_candidate(name, cfg, rt).optimizer.param_groups
        assert {g["lr"] for g in groups} == {bench_train.BENCH_LR}, name

    def diverge(*args: object, **kwargs: object) -> None:
        raise NonFiniteLoss(7, float("nan"))

    monkeypatch.setattr(bench_train, "train_one_epoch", diverge)
    args = bench_args("train", "--compare", "torchvision", "--steps", "1", "--warmup", "0")
    assert bench.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: configured: loss became nan at step 7"), err
