"""Classify images: ``python -m alexnet.predict --checkpoint X IMAGE|DIR ...``.

Each file is decoded by its content as ``prepare`` does (CMYK and grayscale JPEGs, PNG content
under any name become RGB), turned upright by its EXIF orientation, stored the way the network's
training images were (shorter side to 256 and the central 256x256, or Caffe's warp), then cut
into the network's views (the centre, or §4.1's ten patches, softmax averaged) and normalised
with the checkpoint's own statistics. Folders are searched for image files (by extension).

A file that cannot be read gets one line on stderr and the others go on; the exit code is 0
when every image was classified, 1 when some could not be read, 2 for a bad checkpoint or
arguments.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from alexnet import atomic, paper
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.units import Settings, load_rgb, resize_stored
from alexnet.engine import predict
from alexnet.errors import UserError, report_user_errors
from alexnet.inference import Trained, load_trained
from alexnet.log import info
from alexnet.runtime import loader_workers

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
EPILOG = """examples:
  python -m alexnet.predict --checkpoint runs/ilsvrc2012/best.pt photo.jpg
  python -m alexnet.predict --checkpoint runs/demo/best.pt data/synthetic/val --csv --out p.csv
  python -m alexnet.predict --checkpoint torchvision --crops 10 --topk 3 holiday/ --json
  python -m alexnet.predict --checkpoint alexnet-owt-7be5be79.pth cat.png --device cuda
  python -m alexnet.predict --checkpoint torchvision ../shared/data/imagenet_sample_images \
      --class-ids ../shared/data/imagenet_meta/synset_words.txt --csv --out sample.csv

exit code: 0 every image classified, 1 some files could not be read (one line each on
stderr), 2 a bad checkpoint or arguments."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.predict",
        description="Classify image files (or every image in folders) with a trained network: "
        "the top-k classes in words with their probabilities.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a .pt written by alexnet.train, 'torchvision' (its ImageNet weights, downloaded "
        "once) or a file holding torchvision's AlexNet state dict",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|DIR", help="files or folders")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument(
        "--crops",
        type=int,
        choices=(1, 10),
        help="1 (centre) or 10 (§4.1's ten patches); default: the checkpoint's eval.views",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda:0 if present)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, help="decoding processes (default: the cores, max 8)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (one list of records)")
    fmt.add_argument("--csv", action="store_true", help="print CSV: file,rank,class,name,prob")
    p.add_argument("--out", type=Path, help="write the predictions to this file instead")
    p.add_argument(
        "--class-ids",
        type=Path,
        metavar="FILE",
        help="class ids in output order, one per line (first word; e.g. synset_words.txt): "
        "for torchvision's weights, whose classes come as names only, so that images in "
        "<wnid>/ folders are checked against their folder",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _predict(args))


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


class _Decoded(Dataset):
    """Item i -> (uint8 (3, S, S) stored-size image or None, i, why it failed)."""

    def __init__(self, files: list[Path], settings: Settings) -> None:
        self.files, self.settings = files, settings

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            image, _, _ = load_rgb(self.files[i], upright=True)
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported, not fatal
            return None, i, f"{type(err).__name__}: {err}"
        pixels = np.asarray(resize_stored(image, self.settings), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), i, ""


@dataclass
class _Batches:
    """(views, file indices) batches for ``engine.predict``, reporting unreadable files."""

    trained: Trained
    files: list[Path]
    views: int
    args: argparse.Namespace
    device: torch.device
    failed: list[str]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size, stored = self.trained.input_size, paper.STORED_SIZE
        settings = Settings(size=stored, resize=self.trained.cfg.data.resize)
        positions = T.view_positions(stored, stored, size, self.views)
        norm = self.trained.normalizer(self.device)
        workers = loader_workers(self.args.workers)
        workers = 0 if len(self.files) == 1 else min(workers, len(self.files))
        items = DataLoader(_Decoded(self.files, settings), batch_size=None, num_workers=workers)
        show = not self.args.no_progress and len(self.files) > 1
        images, index = [], []
        bar = tqdm(items, total=len(self.files), unit="img", disable=None if show else True)
        for image, i, why in bar:
            if image is None:
                self.failed.append(f"{self.files[i]}: cannot read it as an image ({why})")
                tqdm.write(f"error: {self.failed[-1]}", file=sys.stderr)
            else:
                images.append(image)
                index.append(i)
            if len(images) == self.args.batch_size or (i == len(self.files) - 1 and images):
                batch = torch.stack(images).to(self.device)
                views = N.finish_views(T.crop_views(batch, positions, size), positions, norm)
                yield views, torch.tensor(index)
                images, index = [], []


def _predict(args: argparse.Namespace) -> int:
    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch-size must be at least 1")
    trained = load_trained(args.checkpoint)
    if args.class_ids:
        trained.classes = read_class_ids(args.class_ids, len(trained.classes))
    files, failed = find_images(args.inputs)
    for problem in failed:
        info(f"error: {problem}")
    if not files:
        raise UserError("no image files to classify in " + ", ".join(map(str, args.inputs)))
    rt = trained.runtime(args.device)
    views = args.crops or trained.cfg.eval.views
    start = time.perf_counter()
    batches = _Batches(trained, files, views, args, rt.device, failed)
    probs, index = predict(rt.wrap(trained.model), batches, rt, show_progress=False)
    seconds = time.perf_counter() - start
    found = zip(index.tolist(), probs, strict=True)
    records = [_record(trained, files[i], p, args.topk) for i, p in found]
    _write(records, args)
    rate = len(records) / max(seconds, 1e-9)
    info(
        f"classified {len(records)} of {len(files)} images in {seconds:.1f} s ({rate:.1f} "
        f"images/s, {views} view{'s' if views > 1 else ''}, {rt.device}); {len(failed)} failed"
    )
    _agreement(records, args.topk)
    return 1 if failed else 0


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


def _write(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        text = json.dumps(records, indent=1) + "\n"
    elif args.csv:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["file", "rank", "class", "name", "prob"])
        for r in records:
            out.writerows(
                [r["file"], t["rank"], t["class"], t["name"], t["prob"]] for t in r["top"]
            )
        text = buf.getvalue()
    else:
        lines = []
        for r in records:
            lines.append(r["file"])
            lines += [f"  {t['rank']}. {100 * t['prob']:5.1f}%  {t['name']}" for t in r["top"]]
        text = "\n".join(lines) + "\n"
    if args.out:
        atomic.write_text(args.out, text)
        info(f"wrote {args.out}")
    else:
        sys.stdout.write(text)


def _agreement(records: list[dict[str, Any]], k: int) -> None:
    """For images in folders named after a class: how often the top-1 / top-k agree."""
    known = [r for r in records if "folder_class" in r]
    if not known:
        return
    top1 = sum(r["top"][0]["class"] == r["folder_class"] for r in known)
    topk = sum(any(t["class"] == r["folder_class"] for t in r["top"]) for r in known)
    info(
        f"the folder names a class for {len(known)} images: top-1 agrees for {top1} "
        f"({100 * top1 / len(known):.1f}%), top-{k} for {topk} ({100 * topk / len(known):.1f}%)"
    )


if __name__ == "__main__":
    sys.exit(main())
