"""Which images and which augmentation each training step gets: a pure function of
(seed, epoch, step), whatever the number of processes (see ``loaders.py``), and the datasets
that DataLoader workers use to turn a step (or an evaluation batch) into uint8 crops.

Records are read checked (``PackedSplit.read``/``image``): a corrupt one is reported as a
``Found`` beside the batch, as data. With ``data.on_corrupt: skip`` a training step uses another
record at its place, drawn from (seed, epoch, step, position, attempt) alone, so a resumed or
re-sharded run gets the same one; evaluation leaves it out (and the loader counts it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from alexnet.data import transforms as T
from alexnet.data.packed import PackedSplit
from alexnet.data.records import BadRecord, CorruptRecord

# generator stream tags: the epoch order, a step's augmentation, stand-ins for bad records
_ORDER, _AUGMENT, _REPLACE = 0, 1, 2
MAX_STAND_INS = 32  # corrupt stand-ins in a row before a skip gives up (the set is ruined)
StandIn = Callable[[int, int], int]  # (position in this rank's rows, attempt) -> record


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers, mixed by numpy's SeedSequence (stable, 64-bit)."""
    seed = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(seed))


class Timing:
    """Images delivered and seconds the consumer spent waiting for them.

    The wait is host time inside the loader's ``next``: fetching, and for the gpu path the
    decode; finishing kernels queued on a GPU run asynchronously and are not counted.
    """

    def __init__(self) -> None:
        self.images, self.wait_s, self.start = 0, 0.0, time.perf_counter()
        self.replaced = 0  # corrupt records replaced by others (data.on_corrupt=skip)

    def pop(self) -> dict[str, float]:
        """``images``, ``wait_s``, ``elapsed_s`` and ``replaced`` since the last ``pop``; then
        start again."""
        now = time.perf_counter()
        out = {"images": self.images, "wait_s": self.wait_s, "elapsed_s": now - self.start}
        out["replaced"] = self.replaced
        self.images, self.wait_s, self.start, self.replaced = 0, 0.0, now, 0
        return out


@dataclass(frozen=True)
class Found:
    """A corrupt record met while making a batch, and the record used in its place (None: none
    was, the batch stops a training run or an evaluation leaves the image out)."""

    bad: BadRecord
    replacement: int | None


def load_records(
    split: PackedSplit,
    idx: list[int],
    decode: bool,
    verify: bool,
    stand_in: StandIn | None = None,
) -> tuple[list[int], list[torch.Tensor], list[Found]]:
    """Records ``idx``, checked (``verify``: their checksums too) and ``decode``d to images, or
    their bytes: returns the records used, their images or bytes, and the corrupt ones met.

    ``stand_in(position, attempt)`` names the record to try in a bad one's place (training with
    on_corrupt=skip); without it, or after MAX_STAND_INS bad stand-ins, the place stays empty
    (an evaluation leaves the image out; a training step with an empty place stops the run).
    """
    used: list[int] = []
    out: list[torch.Tensor] = []
    found: list[Found] = []
    for position, i in enumerate(idx):
        for attempt in range(MAX_STAND_INS + 1):
            try:
                out.append(split.image(i, verify) if decode else split.read(i, verify))
                used.append(i)
                break
            except CorruptRecord as err:
                assert err.bad is not None
                if stand_in is None or attempt == MAX_STAND_INS:
                    found.append(Found(err.bad, None))
                    break
                i = stand_in(position, attempt)
                found.append(Found(err.bad, i))
    return used, out, found


class TrainOrder:
    """Which images and which augmentation a rank gets at each step (picklable, no I/O)."""

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        steps: int,
        seed: int,
        rank: int,
        world_size: int,
        draw: dict[str, Any],
    ) -> None:
        self.num_images, self.batch_size, self.steps = num_images, batch_size, steps
        self.seed = seed
        self.lo, self.hi = rank * batch_size // world_size, (rank + 1) * batch_size // world_size
        self.draw = draw  # keyword arguments of transforms.draw_params
        self._order: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order: a permutation, continued by further ones if steps need more."""
        if self._order is None or self._order[0] != epoch:
            need, n = self.steps * self.batch_size, self.num_images
            perms = [
                torch.randperm(n, generator=generator(self.seed, _ORDER, epoch, k))
                for k in range(-(-need // n))
            ]
            self._order = (epoch, torch.cat(perms)[:need])
        return self._order[1]

    def indices(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's image indices at global ``step``."""
        start = step * self.batch_size
        return self.permutation(epoch)[start + self.lo : start + self.hi]

    def params(self, epoch: int, step: int) -> T.AugmentParams:
        """This rank's rows of the step's augmentation (drawn for the whole global batch)."""
        gen = generator(self.seed, _AUGMENT, epoch, step)
        return T.draw_params(gen, self.batch_size, **self.draw).slice(self.lo, self.hi)

    def stand_in(self, epoch: int, step: int) -> StandIn:
        """(position in this rank's rows, attempt) -> the record that takes a corrupt one's
        place: uniform over the split, from (seed, epoch, step, position in the global batch,
        attempt) alone, so any rank count, worker count or resume picks the same one. It keeps
        the place's augmentation."""

        def pick(position: int, attempt: int) -> int:
            gen = generator(self.seed, _REPLACE, epoch, step, self.lo + position, attempt)
            return int(torch.randint(self.num_images, (1,), generator=gen))

        return pick


class StepKeys(Sampler):
    """The keys the next pass of a DataLoader fetches; set before each ``iter(loader)``."""

    def __init__(self) -> None:
        self.keys: list = []

    def __iter__(self) -> Iterator:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TrainSteps(Dataset):
    """Item (epoch, step) -> (corrupt records found, uint8 crops, labels, augmentation...) of one
    rank's batch; crops and labels are None when a place stayed empty (the run stops)."""

    def __init__(
        self, split: PackedSplit, order: TrainOrder, size: int, verify: bool, skip: bool
    ) -> None:
        self.split, self.order, self.size = split, order, size
        self.verify, self.skip = verify, skip

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, ...]:
        idx, p = self.order.indices(*key).tolist(), self.order.params(*key)
        stand_in = self.order.stand_in(*key) if self.skip else None
        used, images, found = load_records(self.split, idx, True, self.verify, stand_in)
        if len(used) < len(idx):
            return found, None, None, *p.astuple()
        crops = T.crop_flip(images, p.top, p.left, p.flip, self.size, p.height, p.width)
        return found, crops, self.split.labels[used], *p.astuple()


class EvalBatches(Dataset):
    """Item b -> (corrupt records left out, uint8 (n, 3, S, S) images or None if none is left,
    labels) of the b-th batch of a rank's shard."""

    def __init__(self, split: PackedSplit, batches: list[range], verify: bool) -> None:
        self.split, self.batches, self.verify = split, batches, verify

    def __getitem__(self, b: int) -> tuple[list[Found], torch.Tensor | None, torch.Tensor]:
        used, images, found = load_records(self.split, list(self.batches[b]), True, self.verify)
        return found, torch.stack(images) if images else None, self.split.labels[used]
