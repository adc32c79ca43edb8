"""Shared fixtures, helpers and markers. Every default test runs on the CPU with generated or
shared data; tests marked ``cuda`` or ``two_gpus`` skip themselves without the hardware.

Helpers are plain functions here (``from conftest import train_argv``), so no test module
imports another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
F32_EPS = torch.finfo(torch.float32).eps  # 2**-23

# A tiny training run: 4 classes, batch 8, 2 epochs of 3 steps, a checkpoint after every step.
# Everything else is the paper's recipe (the config defaults), whatever configs/ hold.
TINY_RUN = (
    "model.num_classes=4",
    "train.batch_size=8",
    "train.steps_per_epoch=3",
    "train.epochs=2",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "data.workers=0",
    "eval.batch_size=8",
    "train.stall_steps=1000",
    "run.tensorboard_predictions=0",  # the TensorBoard figures cost a second or two a run;
    "run.tensorboard_embedding=0",  # tiny_run draws them, for the tests that read them back
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpus = torch.cuda.device_count()
    for item in items:
        if "cuda" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "two_gpus" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason="needs two CUDA GPUs"))


# --- helpers ------------------------------------------------------------------------------------


def tiny_overrides(data: Path, run: Path, *extra: str) -> list[str]:
    """The tiny run's ``KEY=VALUE`` overrides on ``data`` into ``run``, plus ``extra``."""
    return [*TINY_RUN, f"data.root={data}", f"run.dir={run}", *extra]


def tiny_config(data: Path, run: Path, *extra: str):
    """The tiny run's ``Config`` (for ``training.loop.run``), plus ``extra`` overrides."""
    from alexnet.config import load_config

    return load_config(None, tiny_overrides(data, run, *extra))


def train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    """``python -m alexnet.train`` arguments for the tiny run (for subprocesses and CLI tests)."""
    out = ["--no-progress"]
    for s in tiny_overrides(data, run, *extra):
        out += ["--set", s]
    return out


def torchrun(*args: str) -> list[str]:
    """The command line of ``torchrun --standalone --nproc_per_node=2 ARGS`` (2 processes)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]


def torchrun_env() -> dict[str, str]:
    """The environment of a ``torchrun`` test: this checkout, one thread a process, and the
    workers' own store each attempt (torch 2.14's shared one breaks restarts, README)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }


def metric_rows(run: Path, kind: str) -> list[dict]:
    """The rows of ``run/metrics.jsonl`` of one kind ("train" or "epoch")."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def model_cfg(*overrides: str):
    """A ``ModelConfig`` from the defaults and ``model.``-less overrides such as ``lrn.k=1``."""
    from alexnet.config import load_config

    return load_config(None, [f"model.{o}" for o in overrides]).model


def image_batch(n: int = 2, size: int = 224, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean-subtracted 0-255 pixels, the scale the paper's constants assume."""
    return torch.randn(n, 3, size, size, dtype=dtype) * 60.0


def assert_close_to_f64(actual: torch.Tensor, expected: torch.Tensor, ulps: float = 64) -> None:
    """A float32 result against a float64 reference, within ``ulps`` float32 rounding units at
    the scale of the values (their largest magnitude), so the bound holds on any CPU."""
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= ulps * F32_EPS * scale, f"error {err:.3g} > {ulps} ulps of {scale:.3g}"


def insert_before_eoi(root: Path, split_name: str, i: int, extra: bytes) -> bytes:
    """Rewrite record ``i``'s shard with ``extra`` inserted before the record's final marker
    (the EOI), and the index to match, CRC-32 included: a record that was bad when stored
    (libjpeg decodes it with a warning). Returns the record's new bytes."""
    from alexnet.data.packed import PackedSplit

    split = PackedSplit(root, split_name)
    index = split.index.copy()
    shard = int(index[i, 0])
    rows = np.flatnonzero(index[:, 0] == shard)
    records = [bytes(split.raw(int(r)).numpy()) for r in rows]
    k = int(np.searchsorted(rows, i))
    assert records[k].endswith(b"\xff\xd9")
    records[k] = records[k][:-2] + extra + b"\xff\xd9"
    offset = 0
    for r, data in zip(rows, records, strict=True):
        index[r, 1:3] = offset, len(data)
        index[r, 4] = zlib.crc32(data)
        offset += len(data)
    split.shard_paths[shard].write_bytes(b"".join(records))
    np.save(root / split_name / "index.npy", index)
    return records[k]


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in generated data set, tiny (4 classes x 12 train / 4 val), prepared once."""
    from alexnet import prepare
    from alexnet.data import shapes

    base = tmp_path_factory.mktemp("tiny")
    shapes.draw_shape_set(base / "src", num_classes=4, train_per_class=12, val_per_class=4, seed=0)
    assert prepare.main([str(base / "src"), str(base / "prepared"), "--workers", "1"]) == 0
    return base / "prepared"


@pytest.fixture(scope="session")
def tiny_run(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny training run (two epochs) on ``prepared_tiny``: a run folder holding
    ``last.pt``, ``best.pt``, ``metrics.jsonl`` and TensorBoard events. Treat it as read-only."""
    from alexnet.training.loop import run as train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    figures = ("run.tensorboard_predictions=8", "run.tensorboard_embedding=256")
    assert train(tiny_config(prepared_tiny, run, *figures), progress=False) == 0
    return run


@pytest.fixture(scope="session")
def tiny_ddp_run(
    prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    """One epoch of the tiny run under DDP: 2 processes started by ``torchrun`` on the CPU
    (gloo), evaluation batches of 3; the run folder and the finished launch. Read-only."""
    run = tmp_path_factory.mktemp("tiny_ddp_run") / "run"
    extra = ("parallel.mode=ddp", "train.epochs=1", "train.checkpoint_every=0", "eval.batch_size=3")
    cmd = torchrun("-m", "alexnet.train", *train_argv(prepared_tiny, run, *extra))
    done = subprocess.run(cmd, cwd=ROOT, env=torchrun_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return run, done
