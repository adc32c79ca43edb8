"""The trainer end to end on a tiny prepared data set: resume, signals, towers, DDP, TensorBoard."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet import train
from alexnet.checkpoint import load_checkpoint
from alexnet.config import load_config
from alexnet.model import build_model

ROOT = Path(__file__).resolve().parents[1]
# 4 classes, batch 8, 2 epochs of 3 steps, a checkpoint after every step.
BASE = [
    "model.num_classes=4",
    "train.batch_size=8",
    "train.steps_per_epoch=3",
    "train.epochs=2",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "data.workers=0",
    "eval.batch_size=8",
    "schedule.type=plateau",
    "train.stall_steps=1000",
]


def argv(data: Path, run: Path, *extra: str) -> list[str]:
    out = ["--config", str(ROOT / "configs/demo.yaml"), "--no-progress"]
    for s in [*BASE, f"data.root={data}", f"run.dir={run}", *extra]:
        out += ["--set", s]
    return out


def rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "alexnet.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_steps(run: Path, proc: subprocess.Popen, steps: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len(rows(run, "train")) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach step {steps}: {proc.poll()}")


@pytest.fixture(scope="module")
def reference(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run that the other runs are compared with."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert train.main(argv(prepared_tiny, run)) == 0
    return run


def test_run_folder_holds_everything(reference: Path) -> None:
    for name in ("config.yaml", "env.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (reference / name).is_file(), name
    env = json.loads((reference / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["devices"] == ["cpu"]
    state = load_checkpoint(reference / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (2, 0, 6)
    assert len(rows(reference, "train")) == 6 and len(rows(reference, "epoch")) == 2
    for row in rows(reference, "epoch"):
        assert row["val_images"] == 16 and 0.0 <= row["val_top1_err"] <= 1.0
        assert row["images_per_s"] > 0 and 0.0 <= row["data_wait_fraction"] <= 1.0


def test_kill_9_mid_epoch_then_resume_is_bit_identical(
    prepared_tiny: Path, reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = spawn(argv(prepared_tiny, run))
    wait_for_steps(run, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped = load_checkpoint(run / "last.pt")
    assert (stopped["epoch"], stopped["step"]) < (2, 0), "the kill came too late to test a resume"
    assert (
        train.main(
            argv(
                prepared_tiny,
                run,
            )
            + ["--resume", "auto"]
        )
        == 0
    )
    ref, got = weights(reference / "last.pt"), weights(run / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ref_losses = [r["loss"] for r in rows(reference, "train")]
    got_losses = {r["step"]: r["loss"] for r in rows(run, "train")}  # later rows win
    assert [got_losses[r["step"]] for r in rows(reference, "train")] == ref_losses


def test_sigint_saves_a_checkpoint_and_exits_cleanly(
    prepared_tiny: Path, reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = spawn(argv(prepared_tiny, run))
    wait_for_steps(run, proc, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "Traceback" not in out and "resume with --resume auto" in out
    stopped = load_checkpoint(run / "last.pt")
    assert (stopped["epoch"], stopped["step"]) < (2, 0)
    assert train.main(argv(prepared_tiny, run) + ["--resume", "auto"]) == 0
    ref, got = weights(reference / "last.pt"), weights(run / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_two_device_form_on_cpu_gives_the_same_losses(prepared_tiny: Path, tmp_path: Path) -> None:
    """Same weights, data and dropout masks in both forms: only float rounding differs.

    A stable run (lr 0.001, one epoch) keeps rounding differences from being amplified, so the
    tolerances below hold on any CPU: losses within 1e-4 relative, and each layer's weight
    *update* within 1e-3 of that update's own size.
    """
    stable = ("optim.lr=0.001", "train.epochs=1", "train.checkpoint_every=0")
    single, towers = tmp_path / "single", tmp_path / "towers"
    assert train.main(argv(prepared_tiny, single, *stable)) == 0
    extra = ("parallel.mode=two_device", "parallel.devices=[cpu, cpu]")
    assert train.main(argv(prepared_tiny, towers, *stable, *extra)) == 0
    ref = [r["loss"] for r in rows(single, "train")]
    got = [r["loss"] for r in rows(towers, "train")]
    assert len(got) == 3 and got == pytest.approx(ref, rel=1e-4)
    torch.manual_seed(0)  # the trainer's seed: the initial weights both runs started from
    start = build_model(load_config(None, ["model.num_classes=4"]).model).state_dict()
    ref_w, got_w = weights(single / "last.pt"), weights(towers / "last.pt")
    for k, w0 in start.items():
        update, other = ref_w[k] - w0, got_w[k] - w0
        assert update.abs().max() > 0, k  # the layer was trained
        assert (other - update).abs().max() <= 1e-3 * update.abs().max(), k


def test_tensorboard_events_hold_scalars_and_kernels(reference: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(reference / "tensorboard"), size_guidance={"images": 0, "scalars": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "epoch/val_top1_err",
        "epoch/val_top5_err",
        "epoch/train_top1_err",
        "epoch/images_per_s",
        "epoch/data_wait_fraction",
    ):
        assert tag in tags["scalars"], tag
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses == pytest.approx([r["loss"] for r in rows(reference, "train")], rel=1e-6)
    val = [e.value for e in acc.Scalars("epoch/val_top1_err")]
    assert val == pytest.approx([r["val_top1_err"] for r in rows(reference, "epoch")], rel=1e-6)
    image = acc.Images("conv1/kernels")[-1]
    assert image.width > 11 * 8 and image.height > 11 * 8  # 96 kernels of 11x11 in a grid


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train.main(argv(prepared_tiny, run, "optim.lr=1e12")) == 2
    err = capsys.readouterr().err
    assert "error: loss became" in err and "at step" in err and "last.pt" in err
    bad_step = int(err.split("at step ")[1].split(";")[0])
    state = load_checkpoint(run / "last.pt")
    assert state["global_step"] <= bad_step
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_loss_stuck_at_ln_classes_is_warned_about(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fc8 weights ~0 and lr ~0: logits are constant, so the loss stays at ln(4).
    extra = (
        "model.init.weight_std.fc8=1e-9",
        "optim.lr=1e-12",
        "train.stall_steps=2",
        "train.epochs=1",
        "train.checkpoint_every=0",
    )
    assert train.main(argv(prepared_tiny, tmp_path / "run", *extra)) == 0
    err = capsys.readouterr().err
    assert f"about ln(4) = {math.log(4):.3f}" in err


@pytest.mark.slow
@pytest.mark.parametrize("towers", [False, True], ids=["grouped", "two_device_per_process"])
def test_ddp_with_torchrun_on_cpu_evaluates_every_image_once(
    prepared_tiny: Path, tmp_path: Path, towers: bool
) -> None:
    run = tmp_path / "run"
    extra = (
        ("parallel.two_device_per_process=true", "parallel.devices=[cpu, cpu]") if towers else ()
    )
    args = argv(
        prepared_tiny,
        run,
        "parallel.mode=ddp",
        "train.epochs=1",
        "train.checkpoint_every=0",
        "eval.batch_size=3",
        *extra,
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "alexnet.train",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 process(es) x 4 images = batch 8" in out.stderr
    (epoch,) = rows(run, "epoch")
    assert epoch["val_images"] == 16
    assert len(rows(run, "train")) == 3
    state = load_checkpoint(run / "last.pt")
    assert state["world_size"] == 2 and state["layout"] == ("two_device" if towers else "single")


def test_existing_run_is_not_overwritten(
    prepared_tiny: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (reference / "last.pt").stat().st_mtime_ns
    assert train.main(argv(prepared_tiny, reference)) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert (reference / "last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("optim.lr=fast",), "optim.lr: expected float"),
        (("data.root=/nonexistent/data",), "does not exist"),
        (("model.num_classes=7",), "set --set model.num_classes=4"),
        (("parallel.mode=ddp",), "must be launched by torchrun"),
    ],
)
def test_bad_input_is_one_clear_error(
    prepared_tiny: Path,
    tmp_path: Path,
    extra: tuple[str, ...],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert train.main(argv(prepared_tiny, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bench_train_times_synthetic_and_real_steps(
    prepared_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alexnet.bench import __main__ as bench

    sets = [
        "model.num_classes=4",
        "train.batch_size=4",
        "data.workers=0",
        f"data.root={prepared_tiny}",
    ]
    args = ["train", "--steps", "2", "--warmup", "1", "--data"]
    for s in sets:
        args += ["--set", s]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    rates = [
        float(line.split(":")[-1].split()[0]) for line in out.splitlines() if "images/s" in line
    ]
    assert len(rates) == 2 and all(r > 0 for r in rates), out
