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
- ``gpu``: a thread reads a step's encoded bytes ahead, and another decodes them in ONE
  batched ``torchvision.io.decode_jpeg(..., device=device)`` call, crops and finishes them on
  the device, ``MADE_AHEAD`` steps ahead of the training step, on a CUDA stream of its own
  (``ahead.py``). With ``device="cpu"`` the same code decodes on the CPU, in turn.

Evaluation always decodes with the CPU decoder (worker processes), whatever ``data.loader``
says, so that reported errors do not depend on the machine: nvJPEG's pixels differ from
libjpeg-turbo's by a level or two (the JPEG standard leaves the IDCT and the chroma upsampling to
each decoder), which is noise to training but not what a reported figure should rest on.

Both count the images delivered and the seconds the consumer waited (``pop_timing``); what
they share lives in ``loader_base.py``. Both read each record checked (its CRC-32, a decoder
warning as an error) and handle a corrupt one as ``data.on_corrupt`` says (``sampling.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from alexnet.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig, input_size
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.ahead import made_ahead
from alexnet.data.loader_base import Batch, LoaderBase
from alexnet.data.packed import PackedSplit, Stats
from alexnet.data.sampling import EvalBatches, TrainOrder, TrainSteps
from alexnet.errors import UserError
from alexnet.runtime import Placement

__all__ = ["Batch", "EvalLoader", "TrainLoader"]
MADE_AHEAD = 2  # batches the gpu path decodes and finishes ahead of the step


class TrainLoader(LoaderBase):
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
        self._dataset = TrainSteps(split, self.order, self.size, self.verify, self.skip)

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
        for crops, labels, *params in self._train_items(self._worker_items(keys)):
            x = N.finish(self._to_device(crops), T.AugmentParams(*params), self.norm)
            yield x, self._to_device(labels)

    def _decoded_batches(self, epoch: int, steps: range) -> Iterator[Batch]:
        def read(step: int) -> tuple:
            idx = self.order.indices(epoch, step).tolist()
            stand_in = self.order.stand_in(epoch, step) if self.skip else None
            return *self._read(idx, stand_in), stand_in, self.order.params(epoch, step)

        def make(read: tuple) -> Batch:  # in made_ahead's thread; an error surfaces in turn
            found, data, used, stand_in, p = read
            self._take(found, training=True)
            images, used = self._decode_checked(data, used, True, stand_in)
            crops = T.crop_flip(images, p.top, p.left, p.flip, self.size, p.height, p.width)
            return N.finish(crops, p, self.norm), self._to_device(self.split.labels[used])

        read_bytes = self._read_ahead(list(steps), read)
        if self.device.type != "cuda":  # the same batches, made in turn: on the CPU decoding and
            # the step share the cores, and the CPU decoder's warnings are caught on descriptor
            # 2 (records.py), where another thread's log line must not land
            return map(make, read_bytes)
        return made_ahead(read_bytes, make, self.device, depth=MADE_AHEAD)


class EvalLoader(LoaderBase):
    """Evaluation batches: float (n, V, 3, size, size) views and (n,) labels on ``device``.

    Rank r of w reads images [r*N//w, (r+1)*N//w) in order, so the ranks together see every
    image exactly once (no padding). ``views`` = 1 (centre crop) or 10 (§4.1's ten patches in
    ``TenCrop`` order); the mean image is subtracted at each view's position; no lighting.
    A corrupt record is left out of its batch, named in the log and listed in ``unscored``
    (the last pass's); ``training.engine.evaluate`` counts them or stops (``data.on_corrupt``).
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
        self._dataset = EvalBatches(split, self.batches, self.verify)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        # Always the CPU decoder (libjpeg-turbo, as PIL and torchvision on the CPU), whatever
        # data.loader says: reported errors then do not depend on the loader or the GPU, and
        # evaluation's decoding is cheap beside its ten forward passes per image.
        self.unscored = []  # the images this pass leaves out (corrupt records), once it ends
        source = self._eval_items(self._worker_items(list(range(len(self.batches)))))
        return self._timed(self._finish(images, labels) for images, labels in source)

    def _finish(self, images: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> Batch:
        images = torch.stack(images) if isinstance(images, list) else images
        views = T.crop_views(images, self.positions, self.size)
        return N.finish_views(views, self.positions, self.norm), self._to_device(labels)
