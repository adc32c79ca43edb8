"""Training and evaluation batches from a prepared data set (``alexnet.data.packed``).

Batching is a pure function of (seed, epoch, step), whatever the number of processes
(``sampling.py``):

- the epoch's order is ``torch.randperm`` from a generator seeded by (seed, epoch);
- global step t is ``order[t*B:(t+1)*B]`` (the last partial batch is dropped), and its
  augmentation is drawn for the whole batch from a generator seeded by (seed, epoch, t);
- DDP rank r of w takes rows [r*B/w, (r+1)*B/w) of that batch and of its augmentation, so the
  ranks together see exactly the single-process batch, and ``epoch(e, start_step=k)`` yields
  exactly batches k, k+1, ... of the uninterrupted epoch (bit-identical mid-epoch resume).

Two ways to make a batch (``data.loader``), with identical results for the same decoder:

- ``cpu``: DataLoader worker processes decode the JPEGs one by one and cut the uint8 crops;
  the main process copies them to the device (pinned, non-blocking) and finishes them there
  (mean, lighting) with ``alexnet.data.normalize.finish``.
- ``gpu``: the main process reads a step's encoded bytes (a thread reads ahead) and decodes
  them in ONE batched ``torchvision.io.decode_jpeg(..., device=device)`` call, then crops and
  finishes on the device. With ``device="cpu"`` the same code decodes on the CPU.

Both count the images delivered and the seconds the consumer waited (``pop_timing``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from alexnet.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig, input_size
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.packed import PackedSplit, Stats
from alexnet.data.sampling import EvalBatches, StepKeys, Timing, TrainOrder, TrainSteps
from alexnet.errors import UserError
from alexnet.runtime import Placement, loader_workers

Batch = tuple[torch.Tensor, torch.Tensor]  # (float images on the device, int64 labels)
READ_AHEAD = 3  # steps of encoded bytes the gpu path reads ahead in its thread


class _Loader:
    """What both loaders share: the worker DataLoader, byte reading, batched decode, timing."""

    def __init__(self, split: PackedSplit, data_cfg: DataConfig, at: Placement) -> None:
        if not 0 <= at.rank < at.world_size:
            raise UserError(f"rank {at.rank} is outside a world of {at.world_size} processes")
        if split.resize != data_cfg.resize:
            raise UserError(
                f"{split.root} holds images prepared with --resize {split.resize} but "
                f"data.resize is {data_cfg.resize}: prepare the set again with "
                f"`python -m alexnet.prepare SOURCE OUT --resize {data_cfg.resize}`"
            )
        self.split, self.cfg, self.device = split, data_cfg, torch.device(at.device)
        self.timing = Timing()
        self._dataset: Dataset | None = None  # what the cpu path's workers read
        self._loader: DataLoader | None = None
        self._keys = StepKeys()
        self._decode_stream: torch.cuda.Stream | None = None

    def pop_timing(self) -> dict[str, float]:
        """Images, data-wait seconds and elapsed seconds since the last call."""
        return self.timing.pop()

    def close(self) -> None:
        """Stop the worker processes now rather than when the loader is garbage-collected."""
        self._loader = None

    def _worker_items(self, keys: list) -> Iterator[tuple[torch.Tensor, ...]]:
        """The dataset's items for ``keys`` from worker processes (started once, persistent)."""
        self._keys.keys = keys
        if self._loader is None:
            workers, cuda = loader_workers(self.cfg.workers), self.device.type == "cuda"
            self._loader = DataLoader(
                self._dataset,
                batch_size=None,
                sampler=self._keys,
                num_workers=workers,
                pin_memory=cuda,
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                # a private generator: iter() must not draw from the
                # global RNG, or a resumed run's dropout masks shift
                generator=torch.Generator().manual_seed(0),
            )
        return iter(self._loader)

    def _read(self, idx: list[int]) -> tuple[list[torch.Tensor] | torch.Tensor, torch.Tensor]:
        """Encoded bytes of ``idx`` copied out of the mapped shards (in the read thread)."""
        labels = self.split.labels[idx]
        if self.split.encoding == "raw":
            s = self.split.image_size
            batch = torch.stack([self.split.raw(i).view(s, s, 3) for i in idx])  # (n, S, S, 3)
            return (batch.pin_memory() if self.device.type == "cuda" else batch), labels
        return [self.split.raw(i).clone() for i in idx], labels

    def _read_ahead(self, items: list, read: Callable[[Any], tuple]) -> Iterator[tuple]:
        """``read(item)`` for each item in a background thread, READ_AHEAD items ahead."""
        with ThreadPoolExecutor(1, thread_name_prefix="alexnet-read") as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(read, item))
                if len(pending) > READ_AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _decode(self, data: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """A raw (n, S, S, 3) batch -> (n, 3, S, S) on the device; JPEGs -> one decode call."""
        if isinstance(data, torch.Tensor):
            return data.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.type != "cuda":
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        # nvJPEG writes its outputs, allocated from the current stream's pool, without waiting
        # for that stream's queued kernels, so it could overwrite blocks they still read
        # (pytorch/vision#9606). Decode with a private stream current, whose pool holds only
        # earlier decodes, each marked as used by the consuming stream.
        consumer = torch.cuda.current_stream(self.device)
        if self._decode_stream is None:
            self._decode_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._decode_stream):
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        consumer.wait_stream(self._decode_stream)
        for image in images:
            image.record_stream(consumer)
        return images

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def _timed(self, source: Iterator[Batch]) -> Iterator[Batch]:
        """Pass ``source`` through, counting the time spent producing each batch as wait."""
        while True:
            start = time.perf_counter()
            item = next(source, None)
            if item is None:
                return
            self.timing.wait_s += time.perf_counter() - start
            self.timing.images += len(item[1])
            yield item


class TrainLoader(_Loader):
    """Training batches: float (n, 3, size, size) images and int64 (n,) labels on ``at.device``.

    Args:
        stats: the data set's statistics (mean image, RGB eigenvectors); None only if unused.
        data, augment: the loader kind, workers and normalisation; the §4.1 augmentation.
        train: ``batch_size`` (global: each of ``at.world_size`` ranks gets its share),
            ``seed`` (with the epoch and step it fixes every batch's images and augmentation)
            and ``steps_per_epoch`` (None = every full batch of one permutation).
        model: the input size it implies (224, or 227 for Caffe's geometry).
        at: the device and this process's rank.
    """

    def __init__(
        self,
        split: PackedSplit,
        stats: Stats | None,
        data: DataConfig,
        augment: AugmentConfig,
        train: TrainConfig,
        model: ModelConfig,
        at: Placement,
    ) -> None:
        super().__init__(split, data, at)
        batch, world = train.batch_size, at.world_size
        if batch % world:
            raise UserError(f"batch size {batch} does not divide over {world} processes")
        if len(split) < batch:
            where = f"{split.root}/{split.split}"
            raise UserError(f"{where} has {len(split)} images, fewer than one batch of {batch}")
        self.size = input_size(model)
        draw = dict(
            image_size=split.image_size,
            size=self.size,
            random_crop=augment.random_crop,
            flip=augment.flip,
            alpha_std=augment.lighting_alpha_std,
            resized_crop=augment.random_resized_crop,
        )
        steps = train.steps_per_epoch or len(split) // batch
        self.order = TrainOrder(len(split), batch, steps, train.seed, at.rank, world, draw)
        self.norm = N.build_normalizer(
            stats,
            data.normalize,
            self.size,
            self.device,
            lighting=augment.lighting,
            lighting_constants=augment.lighting_constants,
            channel_order=data.channel_order,
        )
        self._dataset = TrainSteps(split, self.order, self.size)

    @property
    def steps(self) -> int:
        """Global steps per epoch (the same for every epoch)."""
        return self.order.steps

    def __len__(self) -> int:
        return self.order.steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches ``start_step``, ``start_step + 1``, ... of ``epoch``."""
        if not 0 <= start_step <= self.order.steps:
            raise UserError(f"start step {start_step} is outside 0..{self.order.steps} (steps)")
        steps = range(start_step, self.order.steps)
        if self.cfg.loader == "gpu":
            return self._timed(self._decoded_batches(epoch, steps))
        return self._timed(self._worker_batches([(epoch, t) for t in steps]))

    def _worker_batches(self, keys: list[tuple[int, int]]) -> Iterator[Batch]:
        for crops, labels, *params in self._worker_items(keys):
            x = N.finish(self._to_device(crops), T.AugmentParams(*params), self.norm)
            yield x, self._to_device(labels)

    def _decoded_batches(self, epoch: int, steps: range) -> Iterator[Batch]:
        def read(step: int) -> tuple:
            idx = self.order.indices(epoch, step).tolist()
            return *self._read(idx), self.order.params(epoch, step)

        for data, labels, p in self._read_ahead(list(steps), read):
            images = self._decode(data)
            crops = T.crop_flip(images, p.top, p.left, p.flip, self.size, p.height, p.width)
            yield N.finish(crops, p, self.norm), self._to_device(labels)


class EvalLoader(_Loader):
    """Evaluation batches: float (n, V, 3, size, size) views and (n,) labels on ``device``.

    Rank r of w reads images [r*N//w, (r+1)*N//w) in order, so the ranks together see every
    image exactly once (no padding). ``views`` = 1 (centre crop) or 10 (§4.1's ten patches in
    ``TenCrop`` order); the mean image is subtracted at each view's position; no lighting.
    """

    def __init__(
        self,
        split: PackedSplit,
        stats: Stats | None,
        data: DataConfig,
        model: ModelConfig,
        views: int,
        batch_size: int,
        at: Placement,
    ) -> None:
        super().__init__(split, data, at)
        if batch_size < 1:
            raise UserError(f"evaluation batch size must be >= 1, got {batch_size}")
        n, rank, world = len(split), at.rank, at.world_size
        lo, hi = rank * n // world, (rank + 1) * n // world
        self.batches = [range(i, min(i + batch_size, hi)) for i in range(lo, hi, batch_size)]
        self.size, self.views = input_size(model), views
        self.positions = T.view_positions(split.image_size, split.image_size, self.size, views)
        self.norm = N.build_normalizer(
            stats, data.normalize, self.size, self.device, channel_order=data.channel_order
        )
        self._dataset = EvalBatches(split, self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        if self.cfg.loader == "gpu":
            read = self._read_ahead(self.batches, lambda r: self._read(list(r)))
            source = ((self._decode(data), labels) for data, labels in read)
        else:
            items = self._worker_items(list(range(len(self.batches))))
            source = ((self._to_device(x), y) for x, y in items)
        return self._timed(self._finish(images, labels) for images, labels in source)

    def _finish(self, images: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> Batch:
        images = torch.stack(images) if isinstance(images, list) else images
        views = T.crop_views(images, self.positions, self.size)
        return N.finish_views(views, self.positions, self.norm), self._to_device(labels)
