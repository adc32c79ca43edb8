"""What the training and evaluation loaders share (``loaders.py``): the worker DataLoader that
runs the ``cpu`` path's datasets, reading a batch's encoded bytes (in a thread, ahead of the
consumer) and decoding them in one batched call for the ``gpu`` path, and the data-wait timing.
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
from alexnet.data.sampling import StepKeys, Timing
from alexnet.errors import UserError
from alexnet.runtime import Placement, loader_workers

Batch = tuple[torch.Tensor, torch.Tensor]  # (float images on the device, int64 labels)
READ_AHEAD = 3  # steps of encoded bytes the gpu path reads ahead in its thread


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
