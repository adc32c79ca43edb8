"""The trainer end to end on a tiny prepared data set: resume, signals, towers, DDP, TensorBoard."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet import train
from alexnet.training.checkpoint import load_checkpoint
from alexnet.training.loop import run as train_run

from conftest import ROOT, metric_rows, tiny_config, torchrun, torchrun_env, train_argv


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
        if (run / "metrics.jsonl").exists() and len(metric_rows(run, "train")) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach step {steps}: {proc.poll()}")


def test_run_folder_holds_everything(tiny_run: Path) -> None:
    for name in ("config.yaml", "env.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (tiny_run / name).is_file(), name
    env = json.loads((tiny_run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["devices"] == ["cpu"]
    state = load_checkpoint(tiny_run / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (2, 0, 6)
    assert len(metric_rows(tiny_run, "train")) == 6 and len(metric_rows(tiny_run, "epoch")) == 2
    for row in metric_rows(tiny_run, "epoch"):
        assert row["val_images"] == 16 and 0.0 <= row["val_top1_err"] <= 1.0
        assert row["images_per_s"] > 0 and 0.0 <= row["data_wait_fraction"] <= 1.0


@pytest.mark.slow  # a real training process, stopped and resumed
def test_kill_9_mid_epoch_then_resume_is_bit_identical(
    prepared_tiny: Path, tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = spawn(train_argv(prepared_tiny, run))
    wait_for_steps(run, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped = load_checkpoint(run / "last.pt")
    assert (stopped["epoch"], stopped["step"]) < (2, 0), "the kill came too late to test a resume"
    assert train_run(tiny_config(prepared_tiny, run), "auto", progress=False) == 0
    ref, got = weights(tiny_run / "last.pt"), weights(run / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ref_losses = [r["loss"] for r in metric_rows(tiny_run, "train")]
    got_losses = {r["step"]: r["loss"] for r in metric_rows(run, "train")}  # later rows win
    assert [got_losses[r["step"]] for r in metric_rows(tiny_run, "train")] == ref_losses


@pytest.mark.slow  # a real training process, stopped and resumed
def test_sigint_saves_a_checkpoint_and_exits_cleanly(
    prepared_tiny: Path, tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = spawn(train_argv(prepared_tiny, run))
    wait_for_steps(run, proc, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "Traceback" not in out and "resume with --resume auto" in out
    stopped = load_checkpoint(run / "last.pt")
    assert (stopped["epoch"], stopped["step"]) < (2, 0)
    assert train_run(tiny_config(prepared_tiny, run), "auto", progress=False) == 0
    ref, got = weights(tiny_run / "last.pt"), weights(run / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


# Runs the trainer in a child process whose second torch.save writes part of its file and is
# then killed with SIGKILL: a save interrupted the hard way.
KILLED_SAVE = """
import os, signal, sys, torch
real, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        f.write(b"PK half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = save
from alexnet.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a real training process, stopped and resumed
def test_kill_9_during_a_save_then_resume_leaves_no_temporary_file(
    prepared_tiny: Path, tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", KILLED_SAVE, *train_argv(prepared_tiny, run)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert left and all(name.startswith(".last.pt.") for name in left)  # the killed save
    assert load_checkpoint(run / "last.pt")["global_step"] == 1  # the first save is intact
    assert train_run(tiny_config(prepared_tiny, run), "auto", progress=False) == 0
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    ref, got = weights(tiny_run / "last.pt"), weights(run / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # and the run ended as if never killed


def test_plateau_cuts_the_lr_three_times_through_the_optimiser_then_stops(
    prepared_tiny: Path, tmp_path: Path
) -> None:
    """§5: lr / 10 whenever validation error stops improving, three times, then the end.

    With lr 1e-12 the weights do not move, so the validation error never improves after the
    first epoch: with patience 1 every later epoch is a plateau.
    """
    run = tmp_path / "run"
    extra = (
        "optim.lr=1e-12",
        "optim.bias_lr_mult=2",
        "schedule.patience=1",
        "train.epochs=10",
        "train.steps_per_epoch=1",
        "train.checkpoint_every=0",
    )
    assert train_run(tiny_config(prepared_tiny, run, *extra), progress=False) == 0
    epochs = metric_rows(run, "epoch")
    assert [r["event"] for r in epochs] == ["improved", "drop", "drop", "drop", "stop"]
    assert [r["lr"] for r in epochs] == pytest.approx([1e-12, 1e-12, 1e-13, 1e-14, 1e-15])
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 5  # stopped after the plateau that followed the third cut
    groups = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]}
    assert groups == pytest.approx({"weights": 1e-15, "biases": 2e-15})  # what the steps used


def test_two_device_form_on_cpu_trains_from_the_same_first_loss(
    prepared_tiny: Path, tmp_path: Path
) -> None:
    """The trainer runs the two-device form end to end, from the same weights and data.

    Only the first step's loss is compared (float32, 1e-4): it depends continuously on the
    weights. Later steps can differ by more than rounding wherever a max-pool or ReLU sits on a
    near-tie, since the gradient jumps there; test_towers compares whole training steps in
    float64 instead, where that does not happen.
    """
    once = ("train.epochs=1", "train.steps_per_epoch=2", "train.checkpoint_every=0")
    single, towers = tmp_path / "single", tmp_path / "towers"
    assert train_run(tiny_config(prepared_tiny, single, *once), progress=False) == 0
    extra = ("parallel.mode=two_device", "parallel.devices=[cpu, cpu]")
    assert train_run(tiny_config(prepared_tiny, towers, *once, *extra), progress=False) == 0
    ref = [r["loss"] for r in metric_rows(single, "train")]
    got = [r["loss"] for r in metric_rows(towers, "train")]
    assert len(got) == 2 and got[0] == pytest.approx(ref[0], rel=1e-4)
    assert load_checkpoint(towers / "last.pt")["layout"] == "two_device"


def test_tensorboard_events_hold_scalars_and_kernels(tiny_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
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
    assert losses == pytest.approx([r["loss"] for r in metric_rows(tiny_run, "train")], rel=1e-6)
    val = [e.value for e in acc.Scalars("epoch/val_top1_err")]
    assert val == pytest.approx(
        [r["val_top1_err"] for r in metric_rows(tiny_run, "epoch")], rel=1e-6
    )
    image = acc.Images("conv1/kernels")[-1]
    assert image.width > 11 * 8 and image.height > 11 * 8  # 96 kernels of 11x11 in a grid


def test_non_finite_loss_stops_with_the_step_the_lr_and_the_last_good_checkpoint(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train.main(train_argv(prepared_tiny, run, "optim.lr=1e12")) == 2
    err = capsys.readouterr().err
    found = re.search(
        r"error: loss became (nan|inf|-inf) at step (\d+) \(lr 1e\+12\); stopped: the last "
        r"good checkpoint is (\S+) \(epoch 0, step (\d+), global step (\d+)\)",
        err,
    )
    assert found and len(err.strip().splitlines()) == 2, err  # the run's first line, the error
    bad_step, path, step = int(found[2]), Path(found[3]), int(found[5])
    state = load_checkpoint(path)
    assert path == run / "last.pt" and state["global_step"] == step <= bad_step
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # without a checkpoint yet, it says so instead of naming one that is not there
    run = tmp_path / "early"
    assert (
        train.main(train_argv(prepared_tiny, run, "optim.lr=1e12", "train.checkpoint_every=0")) == 2
    )
    err = capsys.readouterr().err
    assert "stopped: no checkpoint was written yet" in err and not (run / "last.pt").exists()


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
    assert train_run(tiny_config(prepared_tiny, tmp_path / "run", *extra), progress=False) == 0
    err = capsys.readouterr().err
    assert f"about ln(4) = {math.log(4):.3f}" in err


@pytest.mark.slow
@pytest.mark.parametrize("towers", [False, True], ids=["grouped", "two_device_per_process"])
def test_ddp_with_torchrun_on_cpu_evaluates_every_image_once(
    prepared_tiny: Path, tmp_path: Path, towers: bool, request: pytest.FixtureRequest
) -> None:
    if towers:
        run = tmp_path / "run"
        args = train_argv(
            prepared_tiny,
            run,
            "parallel.mode=ddp",
            "train.epochs=1",
            "train.checkpoint_every=0",
            "eval.batch_size=3",
            "parallel.two_device_per_process=true",
            "parallel.devices=[cpu, cpu]",
        )
        cmd = torchrun("-m", "alexnet.train", *args)
        out = subprocess.run(cmd, cwd=ROOT, env=torchrun_env(), capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    else:  # the launch other tests compare with (conftest)
        run, out = request.getfixturevalue("tiny_ddp_run")
    assert "2 process(es) x 4 images = batch 8" in out.stderr
    (epoch,) = metric_rows(run, "epoch")
    assert epoch["val_images"] == 16
    assert len(metric_rows(run, "train")) == 3
    state = load_checkpoint(run / "last.pt")
    assert state["world_size"] == 2 and state["layout"] == ("two_device" if towers else "single")


def test_existing_run_is_not_overwritten(
    prepared_tiny: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (tiny_run / "last.pt").stat().st_mtime_ns
    assert train.main(train_argv(prepared_tiny, tiny_run)) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert (tiny_run / "last.pt").stat().st_mtime_ns == before


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
    assert train.main(train_argv(prepared_tiny, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
