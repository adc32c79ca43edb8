"""Batches made ahead of the training step, in a background thread (the ``gpu`` loader).

The step and the decoding overlap: while the main thread runs step t, one thread reads, decodes
(one batched nvJPEG call), crops, flips and normalises the batches of steps t+1 .. t+depth. On a
GPU that thread works on a CUDA stream of its own, so its kernels run beside the step's; each
batch is handed over with an event the consumer's stream waits for, and its tensors are marked
as used by that stream, so the caching allocator does not hand their memory out again while the
step still reads them. torch ops release the GIL while they run, so one thread is enough: the
nvJPEG decoder of torchvision is serialised anyway.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

Item = TypeVar("Item")
Batch = tuple[torch.Tensor, torch.Tensor]
_DONE = object()  # what the thread sends after the last batch


def made_ahead(
    items: Iterable[Item], make: Callable[[Item], Batch], device: torch.device, depth: int = 2
) -> Iterator[Batch]:
    """``make(item)`` for every item, computed by one background thread up to ``depth`` items
    ahead of the consumer, yielded in order. An exception in ``make`` is raised here, in the
    consumer, at the item where it happened. Closing the iterator early stops the thread."""
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    source = iter(items)

    def produce() -> None:
        try:
            for item in source:
                if stop.is_set():
                    return
                with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
                    batch = make(item)
                    event = torch.cuda.Event() if cuda else None
                    if event is not None:
                        event.record(side)
                _put(ready, (batch, event), stop)
            _put(ready, _DONE, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            _put(ready, err, stop)
        finally:
            close = getattr(source, "close", None)  # a generator's own threads, files...
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="alexnet-ahead", daemon=True)
    thread.start()
    try:
        while True:
            got = ready.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            batch, event = got
            if event is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(event)
                for t in batch:
                    t.record_stream(consumer)
            yield batch
    finally:
        stop.set()
        while thread.is_alive():  # unblock a thread waiting to put, then let it finish
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


def _put(q: queue.Queue, value: Any, stop: threading.Event) -> None:
    """Put ``value`` once there is room, unless the consumer has gone."""
    while not stop.is_set():
        try:
            q.put(value, timeout=0.05)
            return
        except queue.Full:
            continue
