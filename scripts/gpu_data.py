"""Prepare real ImageNet photos for a GPU machine: ``python scripts/gpu_data.py``.

The device tool sends the checkout only, not ``../shared``. This writes a small prepared data
set of real photos into ``.gpu_data/photos`` (git-ignored; name ``.gpu_data`` in the run's
``carry``), which ``scripts/gpu_check.sh`` times the training step on, end to end from JPEG
shards, against synthetic input at the same settings. The photos are the first ``--count`` of
``../shared/data/imagenet_sample_images`` (one ImageNet photo per class), stored as ``prepare``
stores ImageNet: shorter side 256, central 256x256, JPEG q95 4:4:4 baseline (~45 KB each).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from alexnet import cli
from alexnet.data.pack import pack
from alexnet.data.packed import read_meta
from alexnet.data.sources import find_sources
from alexnet.errors import UserError, report_user_errors
from alexnet.runtime import available_cpus

ROOT = Path(__file__).resolve().parents[1]
EPILOG = """examples:
  python scripts/gpu_data.py                       600 photos into .gpu_data/photos
  python scripts/gpu_data.py --count 1000 --out /tmp/photos"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python scripts/gpu_data.py",
        "Prepare real ImageNet sample photos (one per class) for a GPU machine's checks.",
        EPILOG,
    )
    p.add_argument(
        "--photos",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "imagenet_sample_images",
        help="folders of ImageNet photos, <wnid>/<file> (default: ../shared's samples)",
    )
    p.add_argument("--count", type=int, default=600, help="photos to take (default 600)")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu_data" / "photos", help="output")
    return p.parse_args(argv)


def prepare_photos(photos: Path, count: int, out: Path) -> int:
    """Prepare the first ``count`` photos (as a train/<wnid>/ tree of links) and copy what the
    loaders read into ``out``; returns how many were prepared. The units' .npz records stay
    behind: their exact pixel sums are 1.5 MB each, one unit per photo here."""
    files = sorted(photos.glob("n*/*"))[:count]
    if not files:
        raise UserError(f"{photos} holds no <wnid>/<photo> files")
    if (out / "meta.json").exists():
        raise UserError(f"{out} is already prepared: remove it first to prepare it again")
    with tempfile.TemporaryDirectory(prefix="alexnet-gpu-data-") as tmp:
        source, prepared = Path(tmp) / "source", Path(tmp) / "prepared"
        for f in files:
            link = source / "train" / f.parent.name / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.resolve())
        report = pack(find_sources(source), prepared, workers=available_cpus())
        keep = ["stats.npz", "report.json", "train/index.npy", *meta_shards(prepared)]
        for name in [*keep, "meta.json"]:  # meta.json last: the folder is complete
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(prepared / name, out / name)
    return report["counts"]["train"]


def meta_shards(prepared: Path) -> list[str]:
    return list(read_meta(prepared)["splits"]["train"]["shards"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        n = prepare_photos(args.photos, args.count, args.out)
        print(f"prepared {n} photos into {args.out}; carry {args.out.parent.name} to a GPU run")
        return 0

    return report_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
