"""Units of preparation: one chunk of one class of one split, decoded, resized and packed.

A unit reads its images from files under the source folder, or by their byte ranges from the
split's archive (``tars.py``): the same bytes either way, so the same records.

A unit is written as ``<split>/<label>-<chunk>.bin`` (the stored images, concatenated) and
``<split>/<label>-<chunk>.npz`` (their lengths, CRC-32s, names, labels, what was converted or
skipped and, for training units, exact pixel sums for the mean image and the RGB covariance).
Both are written atomically, the ``.npz`` last: a unit counts as finished when its ``.npz``
matches this inventory.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from alexnet import atomic
from alexnet.data import packed, tars
from alexnet.data.images import Storage, encode, load_rgb, resize_stored
from alexnet.data.sources import Inventory, Item

UNIT_FILE = re.compile(r"\d{5}-\d{3}\.(bin|npz)")


@dataclass(frozen=True)
class Unit:
    """One chunk of one class of one split, prepared by one worker call."""

    split: str
    label: int
    chunk: int
    items: tuple[Item, ...]

    @property
    def stem(self) -> str:
        return f"{self.split}/{self.label:05d}-{self.chunk:03d}"

    def signature(self, storage: Storage) -> str:
        names = [item.name for item in self.items]
        stored = dict(storage.__dict__)
        if stored["resize"] == "shorter_side":  # as before the option existed: units prepared
            del stored["resize"]  # then still count as finished
        return json.dumps([packed.VERSION, stored, self.label, names])


def make_units(inventory: Inventory, unit_size: int) -> list[Unit]:
    """Cut the inventory into units of at most ``unit_size`` images, in index order."""
    groups: dict[tuple[str, int], list[Item]] = {}
    for item in inventory.items:
        groups.setdefault((item.split, item.label), []).append(item)
    return [
        Unit(split, label, k // unit_size, tuple(items[k : k + unit_size]))
        for (split, label), items in groups.items()
        for k in range(0, len(items), unit_size)
    ]


def _skip_reason(source: Path | bytes, err: Exception) -> str:
    if isinstance(source, bytes):
        size = len(source)
    else:
        size = source.stat().st_size if source.is_file() else -1
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(err, UnidentifiedImageError):
        return "not an image format PIL can read"
    return f"{type(err).__name__}: {err}"


@contextmanager
def _reader(source: Path, unit: Unit) -> Iterator[Callable[[Item], Path | bytes]]:
    """Item -> its file under the root folder ``source``, or its bytes in the archive ``source``
    (one descriptor per unit; each image one ``pread`` of its byte range)."""
    if all(item.place is None for item in unit.items):
        yield lambda item: source / item.name
        return
    with tars.open_file(source) as fd:
        yield lambda item: tars.read_at(fd, *item.place, str(source))  # type: ignore[misc]


def run_unit(job: tuple[Path, Path, Unit, Storage]) -> int:
    """Prepare one unit (source folder or archive, out, unit, storage) and write its shard and
    record file atomically; returns the number of source files it covered."""
    source, out, unit, storage = job
    bin_path, npz_path = out / f"{unit.stem}.bin", out / f"{unit.stem}.npz"
    npz_path.unlink(missing_ok=True)  # from here on the unit counts as unfinished
    s = storage.size
    lengths, crcs, names, converted, skipped, notes = [], [], [], [], [], []
    pixel_sum, outer = np.zeros((s, s, 3)), np.zeros((3, 3))
    with _reader(source, unit) as read, atomic.atomic_open(bin_path) as f:
        for item in unit.items:
            data = read(item)  # a truncated archive stops the run (UserError), it is no skip
            try:
                image, was, caught = load_rgb(data)
            except Exception as err:  # noqa: BLE001 - any decoder failure skips the file
                skipped.append({"file": item.name, "reason": _skip_reason(data, err)})
                continue
            stored, pixels = encode(resize_stored(image, storage), storage)
            f.write(stored)
            lengths.append(len(stored))
            crcs.append(zlib.crc32(stored))  # checked as the loaders read the record
            names.append(item.name)
            converted += [{"file": item.name, "was": was}] if was else []
            notes += [{"file": item.name, "warning": w} for w in caught]
            if unit.split == "train":  # integer-valued sums: exact in float64 (< 2**53)
                pixel_sum += pixels
                flat = pixels.reshape(-1, 3).astype(np.float64)
                outer += flat.T @ flat
    info = {"signature": unit.signature(storage), "converted": converted, "skipped": skipped}
    info["warnings"] = notes
    arrays: dict[str, Any] = {"length": np.array(lengths, np.int64), "name": np.array(names, str)}
    arrays["crc32"] = np.array(crcs, np.int64)
    arrays["label"] = np.full(len(lengths), unit.label, np.int64)
    arrays["info"] = np.array(json.dumps(info))
    if unit.split == "train":
        rgb_sum = pixel_sum.sum((0, 1))  # the same exact integers as summing every image's pixels
        arrays.update(pixel_sum=pixel_sum.transpose(2, 0, 1), rgb_sum=rgb_sum, outer_sum=outer)
        arrays["pixel_count"] = np.int64(len(lengths) * s * s)
    atomic.save_npz(npz_path, **arrays)
    return len(unit.items)


def read_unit(out: Path, unit: Unit, storage: Storage, full: bool = False) -> dict | None:
    """The unit's records if its files are complete and match this plan, else None.

    Args:
        full: also load the names, labels and pixel sums (not needed to check completeness).
    """
    try:
        with np.load(out / f"{unit.stem}.npz") as z:
            arrays = {k: z[k] for k in (z.files if full else ["length", "info"])}
        info = json.loads(str(arrays.pop("info")))
        size = (out / f"{unit.stem}.bin").stat().st_size
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing or damaged: the unit is redone
    if info["signature"] != unit.signature(storage) or size != int(arrays["length"].sum()):
        return None
    return {**arrays, **info}
