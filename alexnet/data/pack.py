"""Pack a raw image tree once: 256x256 images in shards (the format: ``packed.py``).

Each image is decoded by its content, its shorter side resized to 256 and its central 256x256
patch kept (paper §2), then stored as JPEG quality 95 with 4:4:4 chroma, or raw (``images.py``).
Unreadable files are skipped and listed in report.json, never fatal.

Work is cut into units (``units.py``); re-running the same preparation resumes, skipping finished
units. ``meta.json`` is written last, so an unfinished folder is never taken for a prepared one.
The command line is ``python -m alexnet.prepare``.
"""

from __future__ import annotations

import multiprocessing
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
        raise UserError(f"{inventory.root / 'train'} has class folders but no files in them")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # unfinished from here until finalize
    units = make_units(inventory, unit_size)
    for split in {unit.split for unit in units}:
        (out / split).mkdir(exist_ok=True)
    todo = [unit for unit in units if read_unit(out, unit, storage) is None]
    if len(todo) < len(units):
        print(f"resuming: {len(units) - len(todo)} of {len(units)} units are already done")
    jobs = [(inventory.root, out, u, storage) for u in sorted(todo, key=lambda u: -len(u.items))]
    total = sum(len(u.items) for u in todo)
    with tqdm(total=total, unit="img", desc="prepare", disable=None) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(run_unit(job))
        else:
            with multiprocessing.Pool(min(workers, len(jobs))) as pool:
                for done in pool.imap_unordered(run_unit, jobs):
                    bar.update(done)
    return finalize(out, inventory, units, storage, expect_imagenet)


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
    s = storage.size
    report: dict[str, Any] = {"source": str(inventory.root), "val_labels": inventory.val_source}
    report["class_names"] = inventory.names_source
    report.update(counts={}, count_check={}, converted=[], skipped=[], warnings=[])
    report.update(missing_classes={}, unknown_class_files=inventory.unknown)
    report["not_regular_files"] = inventory.irregular
    splits: dict[str, Any] = {}
    mean_sum, rgb_sum, outer, pixels = np.zeros((3, s, s)), np.zeros(3), np.zeros((3, 3)), 0
    for split in [x for x in ("train", "val") if x in inventory.missing]:
        rows, shards, skipped = [], [], 0
        for unit in [u for u in units if u.split == split]:
            rec = read_unit(out, unit, storage, full=True)
            if rec is None:
                raise RuntimeError(f"unit {unit.stem} is incomplete after preparation")
            report["converted"] += rec["converted"]
            report["skipped"] += rec["skipped"]
            report["warnings"] += rec["warnings"]
            skipped += len(rec["skipped"])
            n = len(rec["length"])
            if n:
                offsets = np.cumsum(rec["length"]) - rec["length"]
                shard = np.full(n, len(shards))
                columns = [shard, offsets, rec["length"], rec["label"], rec["crc32"]]
                rows.append(np.stack(columns, 1))
                shards.append(f"{unit.stem}.bin")
            if split == "train" and n:
                mean_sum += rec["pixel_sum"]
                rgb_sum, outer = rgb_sum + rec["rgb_sum"], outer + rec["outer_sum"]
                pixels += int(rec["pixel_count"])
        width = packed.INDEX_COLUMNS[packed.VERSION]
        index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, width), np.int64)
        if inventory.count(split):
            atomic.save_npy(out / split / "index.npy", index)
            splits[split] = {"count": len(index), "shards": shards}
        present = set(index[:, 3].tolist())
        missing = [c for i, c in enumerate(inventory.classes) if i not in present]
        report["missing_classes"][split] = missing
        report["counts"][split] = len(index)
        planned = inventory.count(split)
        check = {"planned": planned, "stored": len(index), "skipped": skipped}
        report["count_check"][split] = {**check, "ok": planned == len(index) + skipped}
    if not pixels:
        train = inventory.root / "train"
        raise UserError(f"none of the training images in {train} could be decoded")
    cov = (outer - np.outer(rgb_sum, rgb_sum) / pixels) / (pixels - 1)  # as np.cov (ddof=1)
    stats = packed.save_stats(out, mean_sum / (pixels // (s * s)), cov, pixels)
    report["stats"] = {"mean_rgb": stats.mean.mean((1, 2)).tolist()}
    report["stats"]["eigval"] = stats.eigval.tolist()
    problems = imagenet_problems(inventory.classes, report) if expect_imagenet else None
    report["imagenet_check"] = problems
    _remove_stale(out, units)
    atomic.write_json(out / "report.json", report)
    meta = {"format": packed.FORMAT, "version": packed.VERSION, "encoding": storage.encoding}
    meta.update(image_size=s, classes=inventory.classes, splits=splits)
    meta["class_names"] = inventory.class_names or inventory.classes  # in words (sources.py)
    meta["jpeg_quality"] = storage.quality if storage.encoding == "jpeg" else None
    meta["resize"] = storage.resize  # shorter_side (§2) or warp (Caffe)
    atomic.write_json(out / "meta.json", meta)
    return report


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
