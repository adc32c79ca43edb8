"""Prepare a raw image tree once: 256x256 images packed into shards (format: alexnet/packed.py).

Each image is decoded by its content (CMYK, grayscale, palette, RGBA and PNG files named .JPEG all
become RGB), its shorter side is resized to 256 (PIL bicubic, antialiased when shrinking), and the
central 256x256 patch is kept (paper §2). It is stored as JPEG quality 95 with 4:4:4 chroma, or raw.
Unreadable files are skipped and listed in report.json, never fatal.

Work is cut into units (one class of one split, at most --unit-size images), each written
atomically as ``<split>/<unit>.bin`` + ``<split>/<unit>.npz``; re-running the same command resumes,
skipping finished units. ``meta.json`` is written last, so an unfinished folder is never taken for
a prepared one.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import sys
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from alexnet import packed, paper
from alexnet.errors import UserError, report_user_errors
from alexnet.sources import WNID, Item, Plan, find_sources

UNIT_FILE = re.compile(r"\d{5}-\d{3}\.(bin|npz)")


@dataclass(frozen=True)
class Settings:
    """How images are stored; part of every unit's signature, so a change redoes the unit."""

    encoding: str = "jpeg"  # "jpeg" or "raw" (uint8 HWC)
    quality: int = 95  # JPEG quality, 4:4:4 chroma
    size: int = paper.STORED_SIZE  # §2: 256


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
        return json.dumps([packed.VERSION, settings.__dict__, self.label, names])


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


def load_rgb(path: Path) -> tuple[Image.Image, str, list[str]]:
    """Decode by content: the RGB image, what it was ("" for an RGB JPEG), and PIL's warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # strict: ImageFile.LOAD_TRUNCATED_IMAGES stays False
        was = " ".join(x for x in (image.format, image.mode) if x not in ("JPEG", "MPO", "RGB"))
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
    tmp = bin_path.with_name(bin_path.name + ".tmp")
    with open(tmp, "wb") as f:
        for item in unit.items:
            try:
                image, was, caught = load_rgb(root / item.name)
            except Exception as err:  # noqa: BLE001 - any decoder failure skips the file
                skipped.append({"file": item.name, "reason": _skip_reason(root / item.name, err)})
                continue
            data, pixels = encode(resize_center_crop(image, s), settings)
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
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, bin_path)
    info = {"signature": unit.signature(settings), "converted": converted, "skipped": skipped}
    info["warnings"] = notes
    arrays: dict[str, Any] = {"length": np.array(lengths, np.int64), "name": np.array(names, str)}
    arrays["label"] = np.full(len(lengths), unit.label, np.int64)
    arrays["info"] = np.array(json.dumps(info))
    if unit.split == "train":
        arrays.update(pixel_sum=pixel_sum.transpose(2, 0, 1), rgb_sum=rgb_sum, outer_sum=outer)
        arrays["pixel_count"] = np.int64(len(lengths) * s * s)
    _save_npz_atomic(npz_path, arrays)
    return len(unit.items)


def _save_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def prepare(
    plan: Plan,
    out: Path,
    settings: Settings = Settings(),
    workers: int = 1,
    unit_size: int = 2000,
    expect_imagenet: bool = False,
) -> dict[str, Any]:
    """Write the packed data set for ``plan`` into ``out``, resuming finished units.

    Returns:
        The report (also written to ``out/report.json``).
    """
    _check_out(out, plan.root)
    if not plan.count("train"):
        raise UserError(f"{plan.root / 'train'} has class folders but no files in them")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # unfinished from here until finalize
    units = make_units(plan, unit_size)
    for split in {unit.split for unit in units}:
        (out / split).mkdir(exist_ok=True)
    todo = [unit for unit in units if read_unit(out, unit, settings) is None]
    if len(todo) < len(units):
        print(f"resuming: {len(units) - len(todo)} of {len(units)} units are already done")
    jobs = [(plan.root, out, u, settings) for u in sorted(todo, key=lambda u: -len(u.items))]
    total = sum(len(u.items) for u in todo)
    with tqdm(total=total, unit="img", desc="prepare", disable=None) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(run_unit(job))
        else:
            with multiprocessing.Pool(min(workers, len(jobs))) as pool:
                for done in pool.imap_unordered(run_unit, jobs):
                    bar.update(done)
    return finalize(out, plan, units, settings, expect_imagenet)


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
    out: Path, plan: Plan, units: list[Unit], settings: Settings, expect_imagenet: bool = False
) -> dict[str, Any]:
    """Write index.npy per split, stats.npz, report.json and, last, meta.json."""
    s = settings.size
    report: dict[str, Any] = {"source": str(plan.root), "val_labels": plan.val_source}
    report.update(counts={}, count_check={}, converted=[], skipped=[], warnings=[])
    report.update(missing_classes={}, unknown_class_files=plan.unknown)
    report["not_regular_files"] = plan.irregular
    splits: dict[str, Any] = {}
    mean_sum, rgb_sum, outer, pixels = np.zeros((3, s, s)), np.zeros(3), np.zeros((3, 3)), 0
    for split in [x for x in ("train", "val") if x in plan.missing]:
        rows, shards, skipped = [], [], 0
        for unit in [u for u in units if u.split == split]:
            rec = read_unit(out, unit, settings, full=True)
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
                rows.append(np.stack([shard, offsets, rec["length"], rec["label"]], 1))
                shards.append(f"{unit.stem}.bin")
            if split == "train" and n:
                mean_sum += rec["pixel_sum"]
                rgb_sum, outer = rgb_sum + rec["rgb_sum"], outer + rec["outer_sum"]
                pixels += int(rec["pixel_count"])
        index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)
        if plan.count(split):
            _save_npy_atomic(out / split / "index.npy", index)
            splits[split] = {"count": len(index), "shards": shards}
        present = set(index[:, 3].tolist())
        missing = [c for i, c in enumerate(plan.classes) if i not in present]
        report["missing_classes"][split] = missing
        report["counts"][split] = len(index)
        planned = plan.count(split)
        check = {"planned": planned, "stored": len(index), "skipped": skipped}
        report["count_check"][split] = {**check, "ok": planned == len(index) + skipped}
    if not pixels:
        raise UserError(f"none of the training images in {plan.root / 'train'} could be decoded")
    cov = (outer - np.outer(rgb_sum, rgb_sum) / pixels) / (pixels - 1)  # as np.cov (ddof=1)
    stats = packed.save_stats(out, mean_sum / (pixels // (s * s)), cov, pixels)
    report["stats"] = {"mean_rgb": stats.mean.mean((1, 2)).tolist()}
    report["stats"]["eigval"] = stats.eigval.tolist()
    report["imagenet_check"] = imagenet_problems(plan.classes, report) if expect_imagenet else None
    _remove_stale(out, units)
    packed.write_json_atomic(out / "report.json", report)
    meta = {"format": packed.FORMAT, "version": packed.VERSION, "encoding": settings.encoding}
    meta.update(image_size=s, classes=plan.classes, splits=splits)
    meta["jpeg_quality"] = settings.quality if settings.encoding == "jpeg" else None
    packed.write_json_atomic(out / "meta.json", meta)
    return report


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_stale(out: Path, units: list[Unit]) -> None:
    """Delete leftover temporary files and units that the current plan does not have."""
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


EXAMPLES = """examples:
  python -m alexnet.prepare /data/imagenet data/ilsvrc2012
      ImageNet with val/ sorted into wnid folders, or flat with the devkit files beside it
  python -m alexnet.prepare /data/imagenet data/ilsvrc2012 \\
      --val-labels ILSVRC2012_validation_ground_truth.txt --id-map map_clsloc.txt
  python -m alexnet.prepare /data/kaggle data/ilsvrc2012 --val-labels LOC_val_solution.csv
  python -m alexnet.prepare ../shared/data/scene15 data/scene15 --limit-per-class 20
  python -m alexnet.synthetic data/syn-src && python -m alexnet.prepare data/syn-src data/syn

Re-running the same command resumes an interrupted preparation. The output folder is ready
when it holds meta.json; report.json lists converted, skipped and missing files."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.prepare",
        description="Resize a raw image tree once to 256x256 (shorter side to 256, central crop, "
        "paper §2) and pack it into shards with an index, the mean image and the RGB covariance.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, help="folder with train/<class>/ and val/ (or test/)")
    p.add_argument("out", type=Path, help="output folder (created; resumed if unfinished)")
    p.add_argument("--val-labels", type=Path, metavar="FILE",
                   help="labels of a flat val/ folder: devkit ground truth (IDs), Kaggle "
                   "LOC_val_solution.csv or Caffe val.txt; recognised by content")  # fmt: skip
    p.add_argument("--id-map", type=Path, metavar="FILE",
                   help="ID->wnid table for devkit IDs, map_clsloc.txt form (`wnid ID name`)")
    p.add_argument("--class-list", type=Path, metavar="FILE",
                   help="class order of Caffe val.txt indices (synset_words.txt); "
                   "default: sorted train folders")  # fmt: skip
    p.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg",
                   help="jpeg (default, 4:4:4) or raw uint8 pixels (4-6x larger, no decoding)")
    p.add_argument("--quality", type=int, default=95, metavar="Q",
                   help="JPEG quality (default 95, as CC2)")
    p.add_argument("--workers", type=int, default=_cpu_count(), metavar="N",
                   help="worker processes (default: all cores, here %(default)s)")
    p.add_argument("--limit-per-class", type=int, metavar="N",
                   help="keep only the first N images of each class per split (quick subsets)")
    p.add_argument("--unit-size", type=int, default=2000, metavar="N",
                   help="images per unit of work and per shard (default 2000)")
    p.add_argument("--expect", choices=("auto", "imagenet", "none"), default="auto",
                   help="check ILSVRC-2012 counts and classes; auto: when there are 1000 wnid "
                   "classes and no --limit-per-class")  # fmt: skip
    return p


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_user_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    for flag in ("workers", "unit_size", "limit_per_class"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be between 1 and 100, got {args.quality}")
    start = time.perf_counter()
    plan = find_sources(args.source, args.val_labels, args.id_map, args.class_list,
                        args.limit_per_class)  # fmt: skip
    wnids = all(WNID.fullmatch(c) for c in plan.classes)
    imagenet = len(plan.classes) == paper.NUM_CLASSES and wnids and not args.limit_per_class
    expect = args.expect == "imagenet" or (args.expect == "auto" and imagenet)
    settings = Settings(args.encoding, args.quality)
    report = prepare(plan, args.out, settings, args.workers, args.unit_size, expect)
    print_summary(args.out, report, settings, time.perf_counter() - start)
    return 0


def print_summary(out: Path, report: dict[str, Any], settings: Settings, seconds: float) -> None:
    """A few lines on stdout; anything that needs attention as warnings on stderr."""
    counts = " + ".join(f"{n:,} {split}" for split, n in report["counts"].items())
    form = f"jpeg q{settings.quality}" if settings.encoding == "jpeg" else "raw"
    print(f"prepared {counts} images into {out} ({form}, {settings.size}x{settings.size}) "
          f"in {seconds:.1f} s")  # fmt: skip
    kinds = Counter(c["was"] for c in report["converted"])
    conv = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    print(f"converted to RGB: {conv}; skipped: {len(report['skipped'])}")
    mean, eig = report["stats"]["mean_rgb"], report["stats"]["eigval"]
    print(f"train mean RGB {mean[0]:.2f} {mean[1]:.2f} {mean[2]:.2f}; RGB covariance eigenvalues "
          f"{eig[0]:.1f} {eig[1]:.1f} {eig[2]:.1f} (0-255 scale)")  # fmt: skip
    print(f"validation labels: {report['val_labels']}; details in {out / 'report.json'}")
    warn = []
    warn += [f"skipped {s['file']}: {s['reason']}" for s in report["skipped"][:5]]
    more = len(report["skipped"]) - 5
    warn += [f"... and {more} more skipped files (see report.json)"] * (more > 0)
    warn += [f"{len(report['warnings'])} PIL warnings (see report.json)"] * bool(report["warnings"])
    for key, what in (("unknown_class_files", "files of unknown class"),
                      ("not_regular_files", "entries that are not regular files")):  # fmt: skip
        if report[key]:
            warn.append(f"{len(report[key])} {what} ignored, e.g. {report[key][0]}")
    for split, missing in report["missing_classes"].items():
        if missing and not report["imagenet_check"]:
            warn.append(f"{split}: {len(missing)} classes have no images, e.g. {missing[0]}")
    warn += [f"not the ILSVRC-2012 release: {p}" for p in report["imagenet_check"] or []]
    for line in warn:
        print(f"warning: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
