"""Which images and which augmentation each training step gets: a pure function of
(seed, epoch, step), whatever the number of processes (see ``loaders.py``), and the datasets
that DataLoader workers use to turn a step (or an evaluation batch) into uint8 crops."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from alexnet.data import transforms as T
from alexnet.data.packed import PackedSplit

_ORDER, _AUGMENT = 0, 1  # generator stream tags: the epoch order, a step's augmentation


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

    def pop(self) -> dict[str, float]:
        """``images``, ``wait_s`` and ``elapsed_s`` since the last ``pop``; then start again."""
        now = time.perf_counter()
        out = {"images": self.images, "wait_s": self.wait_s, "elapsed_s": now - self.start}
        self.images, self.wait_s, self.start = 0, 0.0, now
        return out


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


class StepKeys(Sampler):
    """The keys the next pass of a DataLoader fetches; set before each ``iter(loader)``."""

    def __init__(self) -> None:
        self.keys: list = []

    def __iter__(self) -> Iterator:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TrainSteps(Dataset):
    """Item (epoch, step) -> uint8 crops, labels and augmentation of one rank's batch."""

    def __init__(self, split: PackedSplit, order: TrainOrder, size: int) -> None:
        self.split, self.order, self.size = split, order, size

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        idx, p = self.order.indices(*key), self.order.params(*key)
        images = [self.split.image(i) for i in idx.tolist()]
        crops = T.crop_flip(images, p.top, p.left, p.flip, self.size, p.height, p.width)
        return crops, self.split.labels[idx], *p.astuple()


class EvalBatches(Dataset):
    """Item b -> the b-th batch of (uint8 (n, 3, S, S) images, labels) of a rank's shard."""

    def __init__(self, split: PackedSplit, batches: list[range]) -> None:
        self.split, self.batches = split, batches

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = list(self.batches[b])
        return torch.stack([self.split.image(i) for i in idx]), self.split.labels[idx]
