"""Classifying image files with a trained network.

Each file is decoded by its content as ``prepare`` does (``data.images``: CMYK and grayscale
JPEGs, PNG content under any name become RGB), turned upright by its EXIF orientation, stored
the way the network's training images were (shorter side to 256 and the central 256x256, or
Caffe's warp), then cut into the network's views (the centre, or §4.1's ten patches, softmax
averaged) and normalised with the checkpoint's own statistics. A file that cannot be read is
reported and the others go on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from alexnet import paper
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.images import Storage, load_rgb, resize_stored
from alexnet.errors import UserError
from alexnet.inference.trained import Trained
from alexnet.runtime import loader_workers
from alexnet.training.engine import predict

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class Classified:
    """What ``classify`` found: one record per classified file, and the files it could not
    read (``"path: why"``)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def find_images(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Files to classify (named files as given, folders' image files sorted) and problems."""
    files, problems = [], []
    for path in inputs:
        if path.is_dir():
            found = [f for f in sorted(path.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
            files += [f for f in found if f.is_file()]
            if not found:
                problems.append(f"{path}: no image files in this folder")
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def read_class_ids(path: Path, count: int) -> list[str]:
    """The first word of each non-empty line of ``path``; there must be ``count`` of them."""
    try:
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise UserError(f"--class-ids {path}: {err.strerror or err}") from None
    if len(ids) != count:
        raise UserError(f"--class-ids {path}: {len(ids)} ids for a network with {count} classes")
    return ids


def classify(
    trained: Trained,
    files: list[Path],
    views: int,
    topk: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> Classified:
    """The top-``topk`` classes of every readable file in ``files``, in their order.

    Each record is ``{"file", "top": [{"rank", "class", "name", "prob"}, ...]}``, plus
    ``"folder_class"`` when the file's folder is named after one of the network's classes
    (ImageNet's ``<wnid>/<file>`` layout). Unreadable files are reported on stderr as they come.
    """
    out = Classified()
    batches = _Batches(trained, files, views, batch_size, workers, progress, out.failed)
    module = trained.rt.wrap(trained.model)  # the run's memory format and compile setting
    probs, index = predict(module, batches, trained.rt, show_progress=False)
    found = zip(index.tolist(), probs, strict=True)
    out.records = [_record(trained, files[i], p, topk) for i, p in found]
    return out


def agreement(records: list[dict[str, Any]], k: int) -> str | None:
    """For images in folders named after a class: how often the top-1 / top-k agree."""
    known = [r for r in records if "folder_class" in r]
    if not known:
        return None
    top1 = sum(r["top"][0]["class"] == r["folder_class"] for r in known)
    topk = sum(any(t["class"] == r["folder_class"] for t in r["top"]) for r in known)
    return (
        f"the folder names a class for {len(known)} images: top-1 agrees for {top1} "
        f"({100 * top1 / len(known):.1f}%), top-{k} for {topk} ({100 * topk / len(known):.1f}%)"
    )


class _Decoded(Dataset):
    """Item i -> (uint8 (3, S, S) stored-size image or None, i, why it failed)."""

    def __init__(self, files: list[Path], storage: Storage) -> None:
        self.files, self.storage = files, storage

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            image, _, _ = load_rgb(self.files[i], upright=True)
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported, not fatal
            return None, i, f"{type(err).__name__}: {err}"
        pixels = np.asarray(resize_stored(image, self.storage), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), i, ""


@dataclass
class _Batches:
    """(views, file indices) batches for ``engine.predict``, reporting unreadable files."""

    trained: Trained
    files: list[Path]
    views: int
    batch_size: int
    workers: int | None
    progress: bool
    failed: list[str]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size, stored = self.trained.input_size, paper.STORED_SIZE
        storage = Storage(size=stored, resize=self.trained.cfg.data.resize)
        positions = T.view_positions(stored, stored, size, self.views)
        norm, device = self.trained.normalizer(), self.trained.rt.device
        workers = 0 if len(self.files) == 1 else min(loader_workers(self.workers), len(self.files))
        items = DataLoader(_Decoded(self.files, storage), batch_size=None, num_workers=workers)
        show = self.progress and len(self.files) > 1
        images, index = [], []
        bar = tqdm(items, total=len(self.files), unit="img", disable=None if show else True)
        for image, i, why in bar:
            if image is None:
                self.failed.append(f"{self.files[i]}: cannot read it as an image ({why})")
                tqdm.write(f"error: {self.failed[-1]}", file=sys.stderr)
            else:
                images.append(image)
                index.append(i)
            if len(images) == self.batch_size or (i == len(self.files) - 1 and images):
                batch = torch.stack(images).to(device)
                views = N.finish_views(T.crop_views(batch, positions, size), positions, norm)
                yield views, torch.tensor(index)
                images, index = [], []


def _record(trained: Trained, path: Path, probs: torch.Tensor, k: int) -> dict[str, Any]:
    top = probs.topk(min(k, len(probs)))
    rows = [
        {"rank": r + 1, "class": trained.classes[c], "name": trained.class_names[c], "prob": p}
        for r, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True))
    ]
    record: dict[str, Any] = {"file": str(path), "top": rows}
    if path.parent.name in trained.classes:  # e.g. ImageNet's <wnid>/<file> folders
        record["folder_class"] = path.parent.name
    return record
