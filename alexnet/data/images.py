"""Decoding source images and storing them: the one place that turns a file into the stored
256x256 RGB picture (paper §2) and that picture into the bytes of a shard.

``load_rgb`` decodes by content (CMYK, grayscale, palette, RGBA and PNG files named .JPEG all
become RGB); ``resize_stored`` makes the stored square (shorter side to 256 and the central
patch, or Caffe's warp); ``encode`` writes it as JPEG (4:4:4, baseline) or raw pixels. ``prepare``
and ``predict`` both go through here, so a photo is seen the same way in training and use.
"""

from __future__ import annotations

import io
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from alexnet import paper


@dataclass(frozen=True)
class Storage:
    """How images are stored; part of every unit's signature, so a change redoes the unit."""

    encoding: str = "jpeg"  # "jpeg" or "raw" (uint8 HWC)
    quality: int = 95  # JPEG quality, 4:4:4 chroma
    size: int = paper.STORED_SIZE  # §2: 256
    resize: str = "shorter_side"  # §2; "warp": Caffe's whole image to size x size


def load_rgb(
    source: Path | str | bytes | BinaryIO, upright: bool = False
) -> tuple[Image.Image, str, list[str]]:
    """Decode by content: the RGB image, what it was ("" for an RGB JPEG), and PIL's warnings.

    ``source`` is a file's path, its bytes (an archive member) or an open binary file; the same
    bytes decode the same way from each. ``upright`` turns the image as its EXIF orientation
    tag says (a phone photo as it is shown); ``prepare`` leaves the pixels as stored, as the
    ImageNet pipelines did.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        # a caller's open file stays open (nullcontext); a path is opened and closed here
        with nullcontext(source) if hasattr(source, "read") else open(source, "rb") as f:
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


def resize_stored(image: Image.Image, storage: Storage) -> Image.Image:
    """The stored square image: §2's shorter side + central crop, or Caffe's warp (the whole
    image resized to size x size, aspect ratio ignored; bicubic as above)."""
    if storage.resize == "warp":
        return image.resize((storage.size, storage.size), Image.Resampling.BICUBIC)
    return resize_center_crop(image, storage.size)


def encode(image: Image.Image, storage: Storage) -> tuple[bytes, np.ndarray]:
    """The stored bytes and the (S, S, 3) uint8 pixels a reader will decode from them."""
    if storage.encoding == "raw":
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels.tobytes(), pixels
    image.info = {}  # no ICC profile or EXIF in the shards
    buf = io.BytesIO()
    # baseline (not progressive): the GPUs' hardware JPEG decoders take baseline files only
    image.save(buf, "JPEG", quality=storage.quality, subsampling=0, progressive=False)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
