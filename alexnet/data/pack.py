"""Pack a raw image tree once: 256x256 images in shards (the format: ``packed.py``).

Each image is decoded by its content, its shorter side resized to 256 and its central 256x256
patch kept (paper §2), then stored as JPEG quality 95 with 4:4:4 chroma, or raw (``images.py``).
Unreadable files are skipped and listed in report.json, never fatal.

Work is cut into units (``units.py``); re-running the same preparation resumes, skipping finished
units. ``meta.json`` is written last, so an unfinished folder is never taken for a prepared one.
The command line is ``python -m alexnet.prepare``.
"""

from __future__ import annotations

import errno
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from alexnet import atomic, paper
from alexnet.data import packed
from alexnet.data.images import Storage
from alexnet.data.sources import Inventory
from alexnet.data.units import UNIT_FILE, Unit, make_units, read_unit, run_unit
from alexnet.errors import UserError


def pack(
    inventory: Inventory,
    out: Path,
    storage: Storage | None = None,
    workers: int = 1,
    unit_size: int = 2000,
    expect_imagenet: bool = False,
) -> dict[str, Any]:
    """Write the packed data set for ``inventory`` into ``out``, resuming finished units.

    Returns:
        The report (also written to ``out/report.json``).
    """
    storage = storage or Storage()
    _check_out(out, inventory.root)
    if not inventory.count("train"):
        where = inventory.archives.get("train", inventory.root / "train")
        raise UserError(f"{where} has classes but no files in them")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # unfinished from here until finalize
    units = make_units(inventory, unit_size)
    for split in {unit.split for unit in units}:
        (out / split).mkdir(exist_ok=True)
    todo = [unit for unit in units if read_unit(out, unit, storage) is None]
    if len(todo) < len(units):
        print(f"resuming: {len(units) - len(todo)} of {len(units)} units are already done")
    todo.sort(key=lambda u: -len(u.items))  # the longest first: no straggler at the end
    jobs = [(inventory.source(u.split), out, u, storage) for u in todo]
    try:
        _run(jobs, workers)
        return finalize(out, inventory, units, storage, expect_imagenet)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise UserError(_disk_full(out, todo, storage)) from None


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
STORED_BYTES = {"jpeg": 40 << 10}  # per 256x256 image at q95 (docs/BENCHMARKS.md: 39.8 KiB)


def _run(jobs: list[tuple[Path, Path, Unit, Storage]], workers: int) -> None:
    """Run the units' jobs on ``workers`` processes, with a progress bar (images, rate, ETA)."""
    total = sum(len(job[2].items) for job in jobs)
    with tqdm(total=total, unit="img", desc="prepare", disable=None) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(run_unit(job))
        else:
            with multiprocessing.Pool(min(workers, len(jobs))) as pool:
                for done in pool.imap_unordered(run_unit, jobs):
                    bar.update(done)


def _disk_full(out: Path, todo: list[Unit], storage: Storage) -> str:
    """The message for a full disk: what is free, about what the rest needs, what is kept."""
    per_image = STORED_BYTES.get(storage.encoding, storage.size**2 * 3)
    need = sum(len(unit.items) for unit in todo) * per_image
    free = shutil.disk_usage(out).free
    return (
        f"no space left on the device of {out} ({_size(free)} free; this run's images take "
        f"about {_size(need)}): make room and run the same command again, it continues with "
        "the unfinished units"
    )


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _check_out(out: Path, root: Path) -> None:
    inside = [root.resolve()] + [root.resolve() / d for d in ("train", "val", "validation", "test")]
    if out.resolve() in inside or any(d in out.resolve().parents for d in inside[1:]):
        raise UserError(f"output folder {out} would mix with the source images: choose another")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is a file: give a folder")
    if (out / "meta.json").exists():
        packed.read_meta(out)  # refuses to touch a folder that is not one of ours
    elif out.is_dir() and any(out.iterdir()) and not (out / "train").is_dir():
        raise UserError(f"{out} is not empty and is not a prepared data set: choose a new folder")


def finalize(
    out: Path,
    inventory: Inventory,
    units: list[Unit],
    storage: Storage,
    expect_imagenet: bool = False,
) -> dict[str, Any]:
    """Write index.npy per split, stats.npz, report.json and, last, meta.json."""
    report: dict[str, Any] = {"source": inventory.describe(), "val_labels": inventory.val_source}
    report["class_names"] = inventory.names_source
    report.update(counts={}, count_check={}, converted=[], skipped=[], warnings=[])
    report.update(missing_classes={}, unknown_class_files=inventory.unknown)
    report["not_regular_files"] = inventory.irregular
    splits: dict[str, Any] = {}
    sums = _Sums(storage.size)
    for split in [x for x in ("train", "val") if x in inventory.missing]:
        index, shards = _index_split(out, inventory, units, storage, split, report, sums)
        if inventory.count(split):
            atomic.save_npy(out / split / "index.npy", index)
            splits[split] = {"count": len(index), "shards": shards}
    report["stats"] = sums.save(out, inventory.describe())
    problems = imagenet_problems(inventory.classes, report) if expect_imagenet else None
    report["imagenet_check"] = problems
    _remove_stale(out, units)
    atomic.write_json(out / "report.json", report)
    meta = {"format": packed.FORMAT, "version": packed.VERSION, "encoding": storage.encoding}
    meta.update(image_size=storage.size, classes=inventory.classes, splits=splits)
    meta["class_names"] = inventory.class_names or inventory.classes  # in words (sources.py)
    meta["jpeg_quality"] = storage.quality if storage.encoding == "jpeg" else None
    meta["resize"] = storage.resize  # shorter_side (§2) or warp (Caffe)
    atomic.write_json(out / "meta.json", meta)
    return report


class _Sums:
    """The training units' exact pixel sums, added up into the mean image and RGB covariance."""

    def __init__(self, size: int) -> None:
        self.size, self.pixels = size, 0
        self.mean_sum, self.rgb_sum, self.outer = np.zeros((3, size, size)), 0.0, 0.0

    def add(self, rec: dict[str, Any]) -> None:
        self.mean_sum = self.mean_sum + rec["pixel_sum"]
        self.rgb_sum, self.outer = self.rgb_sum + rec["rgb_sum"], self.outer + rec["outer_sum"]
        self.pixels += int(rec["pixel_count"])

    def save(self, out: Path, source: str) -> dict[str, Any]:
        """Write stats.npz; the report's summary of it."""
        if not self.pixels:
            raise UserError(f"none of the training images in {source} could be decoded")
        n, rgb = self.pixels, np.asarray(self.rgb_sum)
        cov = (self.outer - np.outer(rgb, rgb) / n) / (n - 1)  # as np.cov (ddof=1)
        stats = packed.save_stats(out, self.mean_sum / (n // self.size**2), cov, n)
        return {"mean_rgb": stats.mean.mean((1, 2)).tolist(), "eigval": stats.eigval.tolist()}


def _index_split(
    out: Path,
    inventory: Inventory,
    units: list[Unit],
    storage: Storage,
    split: str,
    report: dict[str, Any],
    sums: _Sums,
) -> tuple[np.ndarray, list[str]]:
    """One split's index rows and shards from its finished units; fills the report's entries."""
    rows, shards, skipped = [], [], 0
    for unit in [u for u in units if u.split == split]:
        rec = read_unit(out, unit, storage, full=True)
        if rec is None:
            raise RuntimeError(f"unit {unit.stem} is incomplete after preparation")
        for key in ("converted", "skipped", "warnings"):
            report[key] += rec[key]
        skipped += len(rec["skipped"])
        n = len(rec["length"])
        if n:
            offsets = np.cumsum(rec["length"]) - rec["length"]
            columns = [np.full(n, len(shards)), offsets, rec["length"], rec["label"], rec["crc32"]]
            rows.append(np.stack(columns, 1))
            shards.append(f"{unit.stem}.bin")
            if split == "train":
                sums.add(rec)
    width = packed.INDEX_COLUMNS[packed.VERSION]
    index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, width), np.int64)
    present = set(index[:, 3].tolist())
    report["missing_classes"][split] = [
        c for i, c in enumerate(inventory.classes) if i not in present
    ]
    report["counts"][split] = len(index)
    check = {"planned": inventory.count(split), "stored": len(index), "skipped": skipped}
    report["count_check"][split] = {**check, "ok": check["planned"] == len(index) + skipped}
    return index, shards


def _remove_stale(out: Path, units: list[Unit]) -> None:
    """Delete leftover temporary files and units that the current inventory does not have."""
    keep = {f"{u.stem}{ext}" for u in units for ext in (".bin", ".npz")}
    for split in ("train", "val"):
        for path in (out / split).glob("*") if (out / split).is_dir() else []:
            rel = f"{split}/{path.name}"
            if path.name.endswith(".tmp") or (UNIT_FILE.fullmatch(path.name) and rel not in keep):
                path.unlink()


def imagenet_problems(classes: list[str], report: dict[str, Any]) -> list[str]:
    """What differs from the ILSVRC-2012 release (1000 classes, 1,281,167 + 50,000 images)."""
    problems = []
    if len(classes) != paper.NUM_CLASSES:
        problems.append(f"{len(classes)} classes, expected {paper.NUM_CLASSES}")
    want = {"train": paper.ILSVRC2012_TRAIN_IMAGES, "val": paper.ILSVRC2012_VAL_IMAGES}
    for split, expected in want.items():
        have = report["counts"].get(split, 0)
        if have != expected:
            problems.append(f"{split}: {have:,} images, expected {expected:,}")
        missing = report["missing_classes"].get(split, classes)
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            problems.append(f"{split}: {len(missing)} classes have no images: {shown}")
    return problems
