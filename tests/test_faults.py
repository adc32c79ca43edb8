"""Nothing silently wrong, nothing lost: corrupt records in the loaders, evaluation and training
(``data.on_corrupt``), a full disk during a checkpoint, and DDP processes killed with SIGKILL.

The damage is real: bytes written into a copy of a prepared set's shard files; the disk is
full where the checkpoint's own file object says so (ENOSPC); the kills are SIGKILLs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.loaders import TrainLoader
from alexnet.data.packed import PackedSplit, load_stats
from alexnet.data.records import CorruptRecord
from alexnet.runtime import Placement

BAD_TRAIN, BAD_VAL = 13, 6  # the records damaged in ``damaged``
BATCH, STEPS = 8, 3  # the tiny run's


@pytest.fixture(scope="module")
def damaged(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny set with 64 random bytes in training record 13 and validation 6."""
    root = tmp_path_factory.mktemp("damaged") / "prepared"
    shutil.copytree(prepared_tiny, root)
    rng = np.random.default_rng(0)
    for name, i in (("train", BAD_TRAIN), ("val", BAD_VAL)):
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
    clean = train_loader(prepared_tiny, workers=0)
    epoch, step, row = first_use(clean.order, BAD_TRAIN)
    ref = epoch_batches(clean, epoch)
    here = train_loader(damaged, on_corrupt="skip", **how)
    got = epoch_batches(here, epoch)
    assert here.pop_timing()["replaced"] == sum(
        BAD_TRAIN in clean.order.indices(epoch, t).tolist() for t in range(STEPS)
    )
    for t, ((x, y), (rx, ry)) in enumerate(zip(got, ref, strict=True)):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[row] = t != step
        assert torch.equal(x[keep], rx[keep]) and torch.equal(y[keep], ry[keep])
    # the stand-in: a pure function of (seed, epoch, step, position), with that place's crop
    stand_in = clean.order.stand_in(epoch, step)(row, 0)
    assert stand_in != BAD_TRAIN and got[step][1][row] == clean.split.labels[stand_in]
    p = clean.order.params(epoch, step).slice(row, row + 1)
    image = PackedSplit(prepared_tiny, "train").image(stand_in)
    crop = T.crop_flip([image], p.top, p.left, p.flip, clean.size, p.height, p.width)
    assert torch.equal(got[step][0][row], N.finish(crop, p, clean.norm)[0])


def test_stop_raises_when_the_batch_with_the_corrupt_record_comes(
    prepared_tiny: Path, damaged: Path
) -> None:
    clean = train_loader(prepared_tiny, workers=0)
    epoch, step, _ = first_use(clean.order, BAD_TRAIN)
    ref = epoch_batches(clean, epoch)
    for how in ({"workers": 2}, {"loader": "gpu"}):
        loader = train_loader(damaged, **how)  # on_corrupt: stop, the default
        got = []
        with pytest.raises(CorruptRecord, match=f"index {BAD_TRAIN}\\)") as caught:
            for batch in loader.epoch(epoch):
                got.append(batch)
        loader.close()
        assert caught.value.bad.shard == "train/00001-000.bin" and len(got) == step
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got, ref[:step], strict=True))
