"""Units of preparation: one chunk of one class of one split, decoded, resized and packed.

A unit is written as ``<split>/<label>-<chunk>.bin`` (the stored images, concatenated) and
``<split>/<label>-<chunk>.npz`` (their lengths, names, labels, what was converted or skipped and,
for training units, exact pixel sums for the mean image and the RGB covariance). Both are written
atomically, the ``.npz`` last: a unit counts as finished when its ``.npz`` matches this plan.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet import atomic, paper
from alexnet.data import packed
from alexnet.data.sources import Item, Plan

UNIT_FILE = re.compile(r"\d{5}-\d{3}\.(bin|npz)")


@dataclass(frozen=True)
class Settings:
    """How images are stored; part of every unit's signature, so a change redoes the unit."""

    encoding: str = "jpeg"  # "jpeg" or "raw" (uint8 HWC)
    quality: int = 95  # JPEG quality, 4:4:4 chroma
    size: int = paper.STORED_SIZE  # §2: 256
    resize: str = "shorter_side"  # §2; "warp": Caffe's whole image to size x size


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

    def signature(self, settings: Settings) -> str:
        names = [item.name for item in self.items]
        stored = dict(settings.__dict__)
        if stored["resize"] == "shorter_side":  # as before the option existed: units prepared
            del stored["resize"]  # then still count as finished
        return json.dumps([packed.VERSION, stored, self.label, names])


def make_units(plan: Plan, unit_size: int) -> list[Unit]:
    """Cut the plan into units of at most ``unit_size`` images, in index order."""
    groups: dict[tuple[str, int], list[Item]] = {}
    for item in plan.items:
        groups.setdefault((item.split, item.label), []).append(item)
    return [
        Unit(split, label, k // unit_size, tuple(items[k : k + unit_size]))
        for (split, label), items in groups.items()
        for k in range(0, len(items), unit_size)
    ]


def load_rgb(path: Path, upright: bool = False) -> tuple[Image.Image, str, list[str]]:
    """Decode by content: the RGB image, what it was ("" for an RGB JPEG), and PIL's warnings.

    ``upright`` turns the image as its EXIF orientation tag says (a phone photo as it is
    shown); ``prepare`` leaves the pixels as stored, as the ImageNet pipelines did.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # strict: ImageFile.LOAD_TRUNCATED_IMAGES stays False
        was = " ".join(x for x in (image.format, image.mode) if x not in ("JPEG", "MPO", "RGB"))
        if upright:
            image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
    return image, was, sorted({str(w.message) for w in caught})


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), then the central size x size patch (paper §2).

    Rounding follows torchvision's Resize(size) + CenterCrop(size) on PIL images.
    """
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_stored(image: Image.Image, settings: Settings) -> Image.Image:
    """The stored square image: §2's shorter side + central crop, or Caffe's warp (the whole
    image resized to size x size, aspect ratio ignored; bicubic as above)."""
    if settings.resize == "warp":
        return image.resize((settings.size, settings.size), Image.Resampling.BICUBIC)
    return resize_center_crop(image, settings.size)


def encode(image: Image.Image, settings: Settings) -> tuple[bytes, np.ndarray]:
    """The stored bytes and the (S, S, 3) uint8 pixels a reader will decode from them."""
    if settings.encoding == "raw":
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels.tobytes(), pixels
    image.info = {}  # no ICC profile or EXIF in the shards
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=settings.quality, subsampling=0)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _skip_reason(path: Path, err: Exception) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if isinstance(err, UnidentifiedImageError):
        return "not an image format PIL can read"
    return f"{type(err).__name__}: {err}"


def run_unit(job: tuple[Path, Path, Unit, Settings]) -> int:
    """Prepare one unit (source root, out, unit, settings) and write its shard and record file
    atomically; returns the number of source files it covered."""
    root, out, unit, settings = job
    bin_path, npz_path = out / f"{unit.stem}.bin", out / f"{unit.stem}.npz"
    npz_path.unlink(missing_ok=True)  # from here on the unit counts as unfinished
    s = settings.size
    lengths, names, converted, skipped, notes = [], [], [], [], []
    pixel_sum, rgb_sum, outer = np.zeros((s, s, 3)), np.zeros(3), np.zeros((3, 3))
    with atomic.atomic_open(bin_path) as f:
        for item in unit.items:
            try:
                image, was, caught = load_rgb(root / item.name)
            except Exception as err:  # noqa: BLE001 - any decoder failure skips the file
                skipped.append({"file": item.name, "reason": _skip_reason(root / item.name, err)})
                continue
            data, pixels = encode(resize_stored(image, settings), settings)
            f.write(data)
            lengths.append(len(data))
            names.append(item.name)
            converted += [{"file": item.name, "was": was}] if was else []
            notes += [{"file": item.name, "warning": w} for w in caught]
            if unit.split == "train":  # integer-valued sums: exact in float64 (< 2**53)
                pixel_sum += pixels
                flat = pixels.reshape(-1, 3).astype(np.float64)
                rgb_sum += flat.sum(0)
                outer += flat.T @ flat
    info = {"signature": unit.signature(settings), "converted": converted, "skipped": skipped}
    info["warnings"] = notes
    arrays: dict[str, Any] = {"length": np.array(lengths, np.int64), "name": np.array(names, str)}
    arrays["label"] = np.full(len(lengths), unit.label, np.int64)
    arrays["info"] = np.array(json.dumps(info))
    if unit.split == "train":
        arrays.update(pixel_sum=pixel_sum.transpose(2, 0, 1), rgb_sum=rgb_sum, outer_sum=outer)
        arrays["pixel_count"] = np.int64(len(lengths) * s * s)
    atomic.save_npz(npz_path, **arrays)
    return len(unit.items)


def read_unit(out: Path, unit: Unit, settings: Settings, full: bool = False) -> dict | None:
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
    if info["signature"] != unit.signature(settings) or size != int(arrays["length"].sum()):
        return None
    return {**arrays, **info}
