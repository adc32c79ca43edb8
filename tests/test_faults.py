"""Nothing silently wrong, nothing lost: corrupt records in the loaders, evaluation and training
(``data.on_corrupt``), a full disk during a checkpoint, and DDP processes killed with SIGKILL.

The damage is real: bytes written into a copy of a prepared set's shard files; the disk is
full where the checkpoint's own file object says so (ENOSPC); the kills are SIGKILLs."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alexnet import train
from alexnet.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.loaders import EvalLoader, TrainLoader
from alexnet.data.packed import PackedSplit, load_stats
from alexnet.data.records import CorruptRecord
from alexnet.data.sampling import TrainOrder
from alexnet.metrics import Accumulator
from alexnet.runtime import Placement, Runtime
from alexnet.training import lock
from alexnet.training.checkpoint import load_checkpoint
from alexnet.training.engine import evaluate, predict
from alexnet.training.loop import run as train_run

from conftest import (
    ROOT,
    insert_before_eoi,
    metric_rows,
    tiny_config,
    torchrun,
    torchrun_env,
    train_argv,
)

BATCH, STEPS = 8, 3  # the tiny run's
BAD_VAL = 6  # the validation record damaged in ``damaged``


def bad_train(root: Path) -> int:
    """The training record damaged in ``damaged``: the third of step 1 of epoch 0, so that the
    tiny run meets it mid-epoch, after a checkpoint."""
    order = TrainOrder(len(PackedSplit(root, "train")), BATCH, STEPS, 0, 0, 1, {})
    return int(order.indices(0, 1)[2])


@pytest.fixture(scope="module")
def damaged(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny set with 64 random bytes in a training record (``bad_train``) and in
    validation record 6."""
    root = tmp_path_factory.mktemp("damaged") / "prepared"
    shutil.copytree(prepared_tiny, root)
    rng = np.random.default_rng(0)
    for name, i in (("train", bad_train(root)), ("val", BAD_VAL)):
        split = PackedSplit(root, name)
        shard, offset, length = split.index[i, :3].tolist()
        with open(split.shard_paths[shard], "r+b") as f:
            f.seek(offset + length // 2)
            f.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    return root


def train_loader(root: Path, **data: object) -> TrainLoader:
    cfg = DataConfig(root=root, normalize="channel_mean_std", **data)
    train_cfg = TrainConfig(batch_size=BATCH, steps_per_epoch=STEPS, seed=0)
    split = PackedSplit(root, "train")
    model = ModelConfig(num_classes=4)
    return TrainLoader(split, load_stats(root), cfg, AugmentConfig(), train_cfg, model, Placement())


def epoch_batches(loader: TrainLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    try:
        return list(loader.epoch(epoch))
    finally:
        loader.close()


def first_use(order, index: int) -> tuple[int, int, int]:
    """(epoch, step, row) where record ``index`` is first in a batch."""
    for epoch in range(10):
        for step in range(STEPS):
            rows = order.indices(epoch, step).tolist()
            if index in rows:
                return epoch, step, rows.index(index)
    raise AssertionError("never used")


@pytest.mark.parametrize(
    "how", [{"workers": 2}, {"loader": "gpu"}], ids=["cpu_workers", "gpu_path_on_cpu"]
)
def test_skip_replaces_a_corrupt_record_the_same_way_everywhere(
    prepared_tiny: Path, damaged: Path, how: dict
) -> None:
    clean, bad = train_loader(prepared_tiny, workers=0), bad_train(damaged)
    epoch, step, row = first_use(clean.order, bad)
    ref = epoch_batches(clean, epoch)
    here = train_loader(damaged, on_corrupt="skip", **how)
    got = epoch_batches(here, epoch)
    assert here.pop_timing()["replaced"] == sum(
        bad in clean.order.indices(epoch, t).tolist() for t in range(STEPS)
    )
    for t, ((x, y), (rx, ry)) in enumerate(zip(got, ref, strict=True)):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[row] = t != step
        assert torch.equal(x[keep], rx[keep]) and torch.equal(y[keep], ry[keep])
    # the stand-in: a pure function of (seed, epoch, step, position), with that place's crop
    stand_in = clean.order.stand_in(epoch, step)(row, 0)
    assert stand_in != bad and got[step][1][row] == clean.split.labels[stand_in]
    p = clean.order.params(epoch, step).slice(row, row + 1)
    image = PackedSplit(prepared_tiny, "train").image(stand_in)
    crop = T.crop_flip([image], p.top, p.left, p.flip, clean.size, p.height, p.width)
    assert torch.equal(got[step][0][row], N.finish(crop, p, clean.norm)[0])


def test_stop_raises_when_the_batch_with_the_corrupt_record_comes(
    prepared_tiny: Path, damaged: Path
) -> None:
    clean, bad = train_loader(prepared_tiny, workers=0), bad_train(damaged)
    epoch, step, _ = first_use(clean.order, bad)
    ref = epoch_batches(clean, epoch)
    for how in ({"workers": 2}, {"loader": "gpu"}):
        loader = train_loader(damaged, **how)  # on_corrupt: stop, the default
        got = []
        with pytest.raises(CorruptRecord, match=f"index {bad}\\)") as caught:
            for batch in loader.epoch(epoch):
                got.append(batch)
        loader.close()
        assert caught.value.bad.index == bad and len(got) == step
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got, ref[:step], strict=True))


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_record_that_decodes_with_a_warning_is_handled_alike_on_both_paths(
    prepared_tiny: Path, tmp_path: Path, policy: str
) -> None:
    """Its checksum matches (it was stored so): the gpu path's batched decode warns, and only
    decoding each record alone finds which; the cpu path's workers decode one by one."""
    root = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, root)
    clean = train_loader(prepared_tiny, workers=0)
    bad = int(clean.order.indices(0, 1)[5])
    insert_before_eoi(root, "train", bad, b"\x00" * 17)
    if policy == "stop":
        for how in ({"workers": 1}, {"loader": "gpu"}):
            with pytest.raises(CorruptRecord, match="extraneous bytes before marker 0xd9"):
                epoch_batches(train_loader(root, **how), 0)
        return
    cpu = epoch_batches(train_loader(root, workers=1, on_corrupt="skip"), 0)
    gpu = epoch_batches(train_loader(root, loader="gpu", on_corrupt="skip"), 0)
    ref = epoch_batches(clean, 0)
    stand_in = clean.order.stand_in(0, 1)(5, 0)
    for t, ((x, y), (gx, gy), (rx, ry)) in enumerate(zip(cpu, gpu, ref, strict=True)):
        assert torch.equal(x, gx) and torch.equal(y, gy)  # one CPU decoder on both paths
        same = torch.ones(len(y), dtype=torch.bool)
        same[5] = t != 1
        assert torch.equal(x[same], rx[same]) and torch.equal(y[same], ry[same])
    assert cpu[1][1][5] == clean.split.labels[stand_in]


class Colour(nn.Module):
    """A fixed, tiny classifier of (n, 3, S, S) images: enough to score an evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.arange(12.0).view(4, 3).sin())
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def eval_loader(root: Path, **data: object) -> EvalLoader:
    cfg = DataConfig(root=root, normalize="channel_mean_std", **data)
    split = PackedSplit(root, "val")
    return EvalLoader(split, load_stats(root), cfg, ModelConfig(num_classes=4), 1, 5, Placement())


def test_evaluation_reports_the_images_it_could_not_score(
    prepared_tiny: Path, damaged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rt, model = Runtime("single", (torch.device("cpu"),)), Colour()
    probs, labels = predict(model, eval_loader(prepared_tiny, workers=0), rt, False)
    keep = torch.arange(len(labels)) != BAD_VAL
    ref = Accumulator()
    ref.update(probs[keep], labels[keep])
    for how in ({"workers": 2}, {"loader": "gpu"}):
        loader = eval_loader(damaged, on_corrupt="skip", **how)
        got = evaluate(model, loader, rt, expected=16, show_progress=False)
        assert got["unscored"] == 1 and got["n"] == 15
        assert got["top1_err"] == ref.rates()["top1_err"]
        assert [b.index for b in loader.unscored] == [BAD_VAL]
        assert f"index {BAD_VAL}), source" in capsys.readouterr().err  # named, once
        loader = eval_loader(damaged, **how)  # stop: the whole pass, then the error
        with pytest.raises(CorruptRecord, match="1 image\\(s\\) could not be scored"):
            evaluate(model, loader, rt, expected=16, show_progress=False)


@pytest.mark.slow
def test_stop_saves_the_steps_done_and_a_skip_resume_ends_as_an_uninterrupted_skip_run(
    damaged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, skip = bad_train(damaged), "data.on_corrupt=skip"
    once = ("train.epochs=1", "train.checkpoint_every=0")  # saves cost seconds; they add nothing
    ref = tmp_path / "ref"
    assert train_run(tiny_config(damaged, ref, skip, *once), progress=False) == 0
    run = tmp_path / "run"
    assert train.main(train_argv(damaged, run, "data.workers=1", *once)) == 2  # stop: default
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    split = PackedSplit(damaged, "train")
    where = split.locate(bad)
    assert (
        f"error: corrupt record in split 'train': shard {where.shard}, record {where.position} "
        f"(index {bad}), source {where.source}: checksum mismatch" in errors[0]
    )
    assert f"stopped (data.on_corrupt=stop): {run / 'last.pt'} (epoch 0, step 1" in errors[0]
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 1, 1)
    assert train_run(tiny_config(damaged, run, skip, *once), "auto", progress=False) == 0
    want, got = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)
    order = TrainOrder(len(split), BATCH, STEPS, 0, 0, 1, {})
    uses = sum(bad in order.indices(0, t).tolist() for t in range(STEPS))
    (row,) = metric_rows(ref, "epoch")
    assert row["train_replaced"] == uses >= 1
    assert (row["val_images"], row["val_unscored"]) == (15, 1)
    (resumed,) = metric_rows(run, "epoch")  # counts what this process met: steps 1 and 2
    assert resumed["train_replaced"] == uses and resumed["val_unscored"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ref / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("epoch/train_replaced")] == [uses]


def test_a_run_folder_in_use_by_another_process_is_refused(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # another process that trains there: it holds the lock
        [sys.executable, "-c", HOLD_LOCK, str(run)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train.main(train_argv(prepared_tiny, run)) == 2
        assert "error: another process is training in" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else was touched
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    lock.hold(run)
    lock.release()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from alexnet.training import lock
lock.hold(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


class FullDisk:
    """A file that takes ``room`` more bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_a_full_disk_keeps_the_previous_checkpoint_and_stops_the_run_cleanly(
    prepared_tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, real_fdopen, saves = tmp_path / "run", os.fdopen, []

    def fdopen(fd: int, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if re.fullmatch(
            r"\.last\.pt\.[0-9a-f]{12}\.tmp", Path(os.readlink(f"/proc/self/fd/{fd}")).name
        ):
            saves.append(fd)
            if len(saves) == 3:  # the disk fills up 1 MiB into the third last.pt
                return FullDisk(f, 1 << 20)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert train.main(train_argv(prepared_tiny, run)) == 2
    err = capsys.readouterr().err
    assert len(saves) == 3 and "Traceback" not in err
    assert (
        f"error: could not write {run / 'last.pt'}: No space left on device; the previous "
        f"{run / 'last.pt'} (epoch 0, step 2, global step 2) is intact; the run stopped" in err
    )
    assert load_checkpoint(run / "last.pt")["global_step"] == 2  # loadable, untouched
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_under_the_metrics_stops_at_the_next_checkpoint_and_a_rerun_records_all(
    prepared_tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import alexnet.log

    run, writes = tmp_path / "run", []

    class Metrics(FullDisk):  # the disk fills up halfway through the 5th line (step 4's)
        def write(self, data) -> int:
            writes.append(bytes(data))
            if len(writes) == 5:
                self.room = len(data) // 2
            return super().write(data)

    def fake_open(path, *args, **kwargs):
        f = open(path, *args, **kwargs)
        return Metrics(f, 1 << 30) if Path(path).name == "metrics.jsonl" else f

    monkeypatch.setattr(alexnet.log, "open", fake_open, raising=False)
    assert train.main(train_argv(prepared_tiny, run)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: could not write {run / 'metrics.jsonl'}: No space left on device; the " in err
    assert "is intact; the run stopped" in err
    assert "warning: could not write" in err  # at once, before the checkpoint that stops it
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["train"] * 3 + ["epoch"]  # no half line
    assert load_checkpoint(run / "last.pt")["global_step"] == 3  # the one before step 4

    monkeypatch.undo()
    assert train.main([*train_argv(prepared_tiny, run), "--resume", "auto"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]


# torchrun's entry point in the test below: the trainer, with each process's pid in PIDS, and
# in the second attempt rank 0's first checkpoint write interrupted: part of the file written,
# then rank 1 killed with SIGKILL and rank 0 left to torchrun's SIGTERM, mid-write.
WRAPPED_TRAIN = """
import io, os, signal, sys, time
from pathlib import Path
import torch
pids = Path(sys.argv.pop(1))
attempt, rank = os.environ["TORCHELASTIC_RESTART_COUNT"], os.environ["RANK"]
(pids / f"{attempt}-{rank}").write_text(str(os.getpid()))
if (attempt, rank) == ("1", "0"):
    real = torch.save
    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # a tensor pickled for a collective, not a checkpoint
            return real(obj, f, *args, **kwargs)
        f.write(b"PK part of a checkpoint")
        f.flush()
        os.kill(int((pids / "1-1").read_text()), signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(300)
    torch.save = save
from alexnet.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ddp_survives_sigkilled_ranks_and_ends_bit_identical(
    prepared_tiny: Path, tiny_ddp_run: tuple[Path, object], tmp_path: Path
) -> None:
    """torchrun --max-restarts: rank 1 killed mid-epoch (attempt 0), then killed while rank 0
    writes a checkpoint (attempt 1); each restart resumes from last.pt, the interrupted write
    left the previous one intact, and the weights end as an uninterrupted DDP run's."""
    ref, _ = tiny_ddp_run  # 1 epoch, uninterrupted
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "wrapped_train.py"
    script.write_text(WRAPPED_TRAIN)
    args = [str(pids), "--resume", "auto"]
    args += train_argv(prepared_tiny, run, "parallel.mode=ddp", "train.epochs=1")
    proc = subprocess.Popen(
        torchrun("--max-restarts=2", str(script), *args),
        cwd=ROOT,
        env=torchrun_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # a checkpoint to resume from: then rank 1 dies, mid-epoch
    os.kill(int((pids / "0-1").read_text()), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    resumed = re.findall(r"resumed from \S+last\.pt: epoch 0, step (\d+)", output)
    assert len(resumed) == 2 and resumed[0] == resumed[1], output  # the write left it intact
    assert re.search(
        r"removed \.(last|best)\.pt\.[0-9a-f]{12}\.tmp, left by an interrupted", output
    )
    assert sorted(p.name for p in pids.iterdir()) == [f"{a}-{r}" for a in "012" for r in "01"]
    want, got = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_torchrun_restarts_sharing_one_store_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from alexnet.training.loop import _check_restarts

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    for shared, warned in (("True", True), ("False", False)):  # what torchrun tells its workers
        monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", shared)
        _check_restarts(is_main=True)
        err = capsys.readouterr().err
        assert ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in err) == warned, err
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    _check_restarts(is_main=True)
    assert capsys.readouterr().err == ""
