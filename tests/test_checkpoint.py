"""Atomic, versioned checkpoints; clear errors for bad files; RNG capture and restore."""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from alexnet.config import OptimConfig
from alexnet.errors import UserError
from alexnet.training import checkpoint as ckpt
from alexnet.training.optim import build_optimizer


def _payload(tag: int = 0) -> dict:
    model = nn.Linear(4, 3)
    optimizer = build_optimizer(model, OptimConfig())
    nn.functional.mse_loss(model(torch.ones(2, 4)), torch.zeros(2, 3)).backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": {"optim": {"lr": 0.01, "bias_weight_decay": None}, "milestones": [30, 60]},
        "epoch": 3 + tag,
        "best": float("inf"),
        "dtype": torch.float32,
        "rng": ckpt.rng_state(),
    }


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    payload = _payload()
    path = tmp_path / "run" / ckpt.LAST  # the parent is created
    ckpt.save_checkpoint(path, payload)
    assert _files(path.parent) == ["last.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600
    raw = torch.load(path, weights_only=True)  # loadable without our loader too
    assert (raw["format"], raw["version"]) == (ckpt.FORMAT, ckpt.VERSION)
    loaded = ckpt.load_checkpoint(path)
    for key, tensor in payload["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert loaded["config"] == payload["config"]
    assert (loaded["epoch"], loaded["best"], loaded["dtype"]) == (3, float("inf"), torch.float32)
    # The optimizer state continues in a fresh optimizer.
    model = nn.Linear(4, 3)
    model.load_state_dict(loaded["model"])
    optimizer = build_optimizer(model, OptimConfig())
    optimizer.load_state_dict(loaded["optimizer"])
    velocities = [s["velocity"] for s in payload["optimizer"]["state"].values()]
    for p, v in zip(model.parameters(), velocities, strict=True):
        assert torch.equal(optimizer.state[p]["velocity"], v)


def test_overwrite_replaces_previous(tmp_path: Path) -> None:
    path = tmp_path / ckpt.LAST
    ckpt.save_checkpoint(path, _payload(0))
    ckpt.save_checkpoint(path, _payload(1))
    assert ckpt.load_checkpoint(path)["epoch"] == 4
    assert _files(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("value", [Path("runs/x"), np.float64(0.5), np.zeros(2), {1, 2}, object()])
def test_save_refuses_values_weights_only_cannot_read(tmp_path: Path, value: object) -> None:
    with pytest.raises(TypeError, match=r"payload\['config'\]\['x'\].*weights_only"):
        ckpt.save_checkpoint(tmp_path / "a.pt", {"config": {"x": value}})
    assert _files(tmp_path) == []


def _truncating_save(obj: object, f: object) -> None:
    f.write(b"PK\x03\x04 half a zip file")  # type: ignore[attr-defined]
    raise RuntimeError("disk full")


@pytest.mark.parametrize("break_at", ["torch.save", "os.replace"])
def test_interrupted_write_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, break_at: str
) -> None:
    path = tmp_path / ckpt.LAST
    ckpt.save_checkpoint(path, _payload(0))
    before = path.read_bytes()
    if break_at == "torch.save":
        monkeypatch.setattr(torch, "save", _truncating_save)
    else:

        def failing_replace(src: object, dst: object) -> None:
            raise OSError("killed before the rename")

        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises((RuntimeError, OSError)):
        ckpt.save_checkpoint(path, _payload(1))
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt"]  # no temporary file left behind
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["epoch"] == 3


def test_interrupted_first_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch, "save", _truncating_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(tmp_path / ckpt.LAST, {"epoch": 1})
    assert _files(tmp_path) == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    ckpt.save_checkpoint(path, _payload())
    return path


CORRUPT = r"is not a readable checkpoint \(truncated or corrupt\?\)$"


def test_damaged_files_are_reported(tmp_path: Path, good: Path) -> None:
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    damaged = {
        "truncated.pt": data[: len(data) // 2],
        "tail_cut.pt": data[:-10],
        "empty.pt": b"",
        "random.pt": rng.bytes(4096),
        "random_pickle.pt": b"\x80\x02" + rng.bytes(512),
    }
    for name, content in damaged.items():
        path = _write(tmp_path / name, content)
        with pytest.raises(UserError, match=CORRUPT) as info:
            ckpt.load_checkpoint(path)
        assert str(path) in str(info.value)


def test_missing_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError, match=f"^checkpoint {missing} does not exist$"):
        ckpt.load_checkpoint(missing)
    with pytest.raises(UserError, match="is a directory, not a checkpoint file$"):
        ckpt.load_checkpoint(tmp_path)
    ckpt.save_checkpoint(tmp_path / ckpt.LAST, {"epoch": 0})
    with pytest.raises(UserError, match=f"did you mean {tmp_path / 'last.pt'}"):
        ckpt.load_checkpoint(tmp_path)


def test_foreign_files(tmp_path: Path) -> None:
    state_dict = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(state_dict, tmp_path / "tv.pth")
    bare = r"is not an alexnet checkpoint \(it looks like a bare state dict"
    with pytest.raises(UserError, match=bare):
        ckpt.load_checkpoint(tmp_path / "tv.pth")
    other = {"state_dict": {"w": torch.ones(1)}, "epoch": 3, "best_acc1": 0.5}
    torch.save(other, tmp_path / "other.pth")
    keys = r"another program's checkpoint \(keys: best_acc1, epoch, state_dict\)"
    with pytest.raises(UserError, match=keys):
        ckpt.load_checkpoint(tmp_path / "other.pth")
    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    objects = r"not an alexnet checkpoint: it holds Python objects \(argparse.Namespace\)"
    with pytest.raises(UserError, match=objects):
        ckpt.load_checkpoint(tmp_path / "pickled.pth")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match="it holds a Tensor"):
        ckpt.load_checkpoint(tmp_path / "tensor.pt")


@pytest.mark.parametrize(
    ("version", "message"),
    [(ckpt.VERSION + 1, "newer than this alexnet reads"), (0, "no longer reads")],
)
def test_other_versions(good: Path, version: int, message: str) -> None:
    data = torch.load(good, weights_only=True)
    data["version"] = version
    torch.save(data, good)
    with pytest.raises(UserError, match=message):
        ckpt.load_checkpoint(good)


def test_find_resume_checkpoint(tmp_path: Path) -> None:
    assert ckpt.find_resume_checkpoint(tmp_path) is None
    ckpt.save_checkpoint(tmp_path / ckpt.BEST, {"epoch": 1})
    assert ckpt.find_resume_checkpoint(tmp_path) is None  # best.pt is never resumed from
    ckpt.save_checkpoint(tmp_path / ckpt.LAST, {"epoch": 1})
    assert ckpt.find_resume_checkpoint(tmp_path) == tmp_path / "last.pt"
    assert ckpt.find_resume_checkpoint(tmp_path / "missing") is None


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.normal()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian in Python's state
    np.random.normal()  # and in numpy's (has_gauss = 1)
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": ckpt.rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pt", map_location="cpu")["rng"])
    assert _draws() == expected
