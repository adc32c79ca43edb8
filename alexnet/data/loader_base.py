"""What the training and evaluation loaders share (``loaders.py``): the worker DataLoader that
runs the ``cpu`` path's datasets, reading a batch's encoded bytes (in a thread, ahead of the
consumer) and decoding them in one batched call for the ``gpu`` path, and the data-wait timing.

Both paths read records checked (``sampling.load_records``) and hand the corrupt ones they met
to ``_take``, in the main process: it names each one once, counts it, and stops a training run
whose batch lost a record (``data.on_corrupt: stop``, or no usable stand-in).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from alexnet.config import DataConfig
from alexnet.data.packed import PackedSplit
from alexnet.data.records import BadRecord, CorruptRecord, DecodeError, decode_jpeg_strict
from alexnet.data.sampling import MAX_STAND_INS, Found, StandIn, StepKeys, Timing, load_records
from alexnet.errors import UserError
from alexnet.log import info
from alexnet.runtime import Placement, loader_workers

Batch = tuple[torch.Tensor, torch.Tensor]  # (float images on the device, int64 labels)
READ_AHEAD = 3  # steps of encoded bytes the gpu path reads ahead in its thread
_UNCHECKED_NOTED: set[str] = set()  # data folders already said to carry no checksums


class LoaderBase:
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
        self.verify, self.skip = data_cfg.verify_checksums, data_cfg.on_corrupt == "skip"
        self.unscored: list[BadRecord] = []  # evaluation: the records of the last pass left out
        self._named: set[int] = set()  # corrupt records already named in the log
        if not split.has_checksums and str(split.root) not in _UNCHECKED_NOTED:
            _UNCHECKED_NOTED.add(str(split.root))
            info(
                f"note: {split.root} was prepared before records carried checksums (format "
                f"{split.version}): reads are not verified; prepare it again to have them checked"
            )

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

    def _read(
        self, idx: list[int], stand_in: StandIn | None = None
    ) -> tuple[list[Found], list[torch.Tensor] | torch.Tensor | None, list[int]]:
        """Checked bytes of ``idx`` copied out of the mapped shards (in the read thread): the
        corrupt records met, the bytes (None if no record is left) and the records used."""
        used, data, found = load_records(self.split, idx, False, self.verify, stand_in)
        if not used:
            return found, None, used
        if self.split.encoding == "raw":
            s = self.split.image_size
            batch = torch.stack([d.view(s, s, 3) for d in data])  # (n, S, S, 3)
            return found, (batch.pin_memory() if self.device.type == "cuda" else batch), used
        return found, [d.clone() for d in data], used

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
        if self.device.type != "cuda":
            return decode_jpeg_strict(data, self.device)
        # nvJPEG writes its outputs, allocated from the current stream's pool, without waiting
        # for that stream's queued kernels, so it could overwrite blocks they still read
        # (pytorch/vision#9606). Decode with a private stream current, whose pool holds only
        # earlier decodes, each marked as used by the consuming stream.
        consumer = torch.cuda.current_stream(self.device)
        if self._decode_stream is None:
            self._decode_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._decode_stream):
            images = decode_jpeg_strict(data, self.device)
        consumer.wait_stream(self._decode_stream)
        for image in images:
            image.record_stream(consumer)
        return images

    def _decode_checked(
        self,
        data: list[torch.Tensor] | torch.Tensor,
        used: list[int],
        training: bool,
        stand_in: StandIn | None = None,
    ) -> tuple[list[torch.Tensor] | torch.Tensor, list[int]]:
        """``_decode``; where the batched call fails or warns, each record alone on the CPU, to
        name the bad ones and replace (``stand_in``) or leave them out. Returns the images and
        the records they are."""
        try:
            return self._decode(data), used
        except DecodeError:
            pass
        used, images, found = load_records(self.split, used, True, False, stand_in)
        self._take(found, training)
        return [self._to_device(image) for image in images], used

    def _take(self, found: list[Found], training: bool) -> None:
        """Name each corrupt record met (once a run), count it, and stop a training run whose
        batch lost one: ``CorruptRecord``, raised in the main process when the batch's turn
        comes, so the steps before it are done."""
        for f in found if training else ():
            if f.replacement is None:
                many = f"; {MAX_STAND_INS} records drawn in its place were corrupt too"
                raise CorruptRecord(f.bad.describe() + (many if self.skip else ""), f.bad)
        for f in found:
            if training:
                self.timing.replaced += 1
            else:
                self.unscored.append(f.bad)
            if f.bad.index in self._named:
                continue
            self._named.add(f.bad.index)
            then = f"record {f.replacement} takes its place" if training else "image not scored"
            info(f"warning: {f.bad.describe()}; {then} (data.on_corrupt={self.cfg.on_corrupt})")

    def _train_items(self, items: Iterator[tuple]) -> Iterator[tuple]:
        """The cpu path's training items without their ``Found`` lists, which ``_take`` takes."""
        for found, *rest in items:
            self._take(found, training=True)
            yield tuple(rest)

    def _eval_items(self, items: Iterator[tuple]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation items left (images, labels), on the device; ``_take`` takes the rest."""
        for found, images, labels in items:
            self._take(found, training=False)
            if images is not None:
                yield self._to_device(images), labels

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
