"""A bad record, named: which split, shard, record and source image it is and what is wrong
with it, and a JPEG decode that treats libjpeg's warnings as errors.

libjpeg (torchvision's CPU decoder) reports damage it can decode through, such as ``Corrupt JPEG
data: 17 extraneous bytes before marker 0xd9``, only as a line written by C code to file
descriptor 2: no exception and no Python warning (torchvision 0.29.1, checked on this machine).
``decode_jpeg_strict`` therefore points descriptor 2 at a private temporary file for the length
of the call and fails when the decoder wrote to it (about 2 us a call).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from alexnet.errors import UserError
from alexnet.log import STDERR


@dataclass(frozen=True)
class BadRecord:
    """Where a record that cannot be used lives, and why (picklable: it crosses from loader
    workers to the main process as data, never as an exception)."""

    split: str
    index: int  # row of <split>/index.npy
    shard: str  # the shard file, relative to the data folder
    position: int  # the record's number within its shard
    source: str | None  # the image it was prepared from (None: the set does not say)
    reason: str

    def describe(self) -> str:
        source = self.source or "unknown (no unit record beside the shard)"
        return (
            f"corrupt record in split {self.split!r}: shard {self.shard}, record "
            f"{self.position} (index {self.index}), source {source}: {self.reason}"
        )


class CorruptRecord(UserError):
    """A record failed its checksum or its decode; ``bad`` names it where this process knows it.

    ``steps_done`` is set by the training loop: the steps of the epoch completed before the
    batch that held it.
    """

    def __init__(self, message: str, bad: BadRecord | None = None) -> None:
        super().__init__(message)
        self.bad = bad
        self.steps_done: int | None = None


class DecodeError(Exception):
    """The decoder failed or warned; the message is its own."""


def decode_jpeg_strict(
    data: torch.Tensor | list[torch.Tensor], device: torch.device | str = "cpu"
) -> torch.Tensor | list[torch.Tensor]:
    """``torchvision.io.decode_jpeg(data, RGB)`` that raises ``DecodeError`` when the decoder
    fails or warns (a list is decoded in one call; the caller finds the record)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if torch.device(device).type != "cpu":  # nvJPEG reports by exceptions only
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as err:
            raise DecodeError(_first_line(err)) from None
    with STDERR:
        # Python's warnings (torchvision's deprecation notice, shown under -X dev or -W default)
        # are not the decoder's: kept out of the window, and shown after it
        with warnings.catch_warnings(record=True) as said, _c_stderr_caught() as caught:
            try:
                out, failed = decode_jpeg(data, mode=ImageReadMode.RGB), None
            except RuntimeError as err:
                out, failed = None, _first_line(err)
        for w in said:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if failed or caught:
        raise DecodeError(failed or "; ".join(caught))
    return out


def _first_line(err: Exception) -> str:
    """torchvision's message without the C++ source location it starts with."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"^\w+, \S+\.(cpp|cu):\d+, ", "", line)


# Descriptor 2 belongs to the process: one redirection at a time, and no console line of ours
# meanwhile (log.STDERR). Each process opens its own file (a forked loader worker must not
# share the parent's file offset).
_SINK: dict[int, int] = {}  # process id -> descriptor of an unlinked file, open for life


@contextmanager
def _c_stderr_caught() -> Iterator[list[str]]:
    """What C code writes to descriptor 2 inside the block, as lines (filled on exit).

    Lines that start with a carriage return (a progress bar redrawn by another thread in the
    window) are passed on to the real stderr, not reported.
    """
    sink = _SINK.get(os.getpid())
    if sink is None:
        sink, name = tempfile.mkstemp(prefix="alexnet-stderr-")
        os.unlink(name)
        _SINK[os.getpid()] = sink
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing can be written there, nor caught
        yield lines
        return
    try:
        os.dup2(sink, 2)
        yield lines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if os.lseek(sink, 0, os.SEEK_END):  # rare: read only when something came
            lines += _drain(sink)


def _drain(sink: int) -> list[str]:
    os.lseek(sink, 0, os.SEEK_SET)
    text = os.read(sink, 1 << 16).decode(errors="replace")
    os.ftruncate(sink, 0)
    os.lseek(sink, 0, os.SEEK_SET)
    passed = [line for line in text.split("\n") if line.startswith("\r")]
    if passed:
        os.write(2, "\n".join(passed).encode())
    return [line.strip() for line in text.split("\n") if line.strip() and line not in passed]
