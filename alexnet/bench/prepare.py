"""``python -m alexnet.bench prepare``: images/s of preparing real photos, archives against folders.

Three measurements on a folder of photos (``<class>/<image>``; by default the 1,000 ImageNet
photos of ``../shared/data/imagenet_sample_images``):

1. One core, the photos' bytes in memory: decode (``load_rgb``), resize (§2: shorter side to
   256, central crop) and encode (JPEG q95 4:4:4, and the stored pixels read back for the
   statistics) - the three steps every image goes through - each timed over all photos.
2. ``prepare`` end to end, the same photos in two forms written to a temporary folder: a
   training tar of class tars (as ILSVRC2012_img_train.tar) and the folders it extracts to;
   the same workers, in interleaved rounds (medians), and the two outputs compared.
3. The hours for ILSVRC-2012 (1,281,167 + 50,000 images) on 8 and 16 cores, projected from the
   per-core rates of 1 (no I/O) and of 2 (the archive path's images per CPU second, every
   process counted: listing, reading, the statistics, writing).

Rates per CPU second (``time.process_time``, ``getrusage``) are what a core does when it is busy,
so they hold on a machine shared with other work, where images/s of the wall clock do not.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

from alexnet import paper
from alexnet.bench.common import hardware, interleaved
from alexnet.data.images import Storage, encode, load_rgb, resize_stored
from alexnet.data.preparation import Request, prepare
from alexnet.errors import UserError
from alexnet.runtime import available_cpus

IMAGENET = paper.ILSVRC2012_TRAIN_IMAGES + paper.ILSVRC2012_VAL_IMAGES
PHOTOS = Path("../shared/data/imagenet_sample_images")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--photos",
        type=Path,
        default=PHOTOS,
        help=f"folder of <class>/<image> photos (default {PHOTOS})",
    )
    p.add_argument("--limit", type=int, help="use only the first N photos (default: all)")
    p.add_argument("--workers", type=int, default=available_cpus(), help="default: all cores")
    p.add_argument("--classes", type=int, default=20, help="class tars to spread the photos over")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")


def stage_rates(photos: list[bytes], storage: Storage) -> dict[str, float]:
    """Images per CPU second of one process for each step of preparing an image, and for the
    three together."""
    spent = {"decode": 0.0, "resize": 0.0, "encode": 0.0}
    clock = time.process_time  # CPU time: a busy machine's waits do not count
    for data in photos:
        start = clock()
        image, _, _ = load_rgb(data)
        decoded = clock()
        image = resize_stored(image, storage)
        resized = clock()
        encode(image, storage)
        spent["decode"] += decoded - start
        spent["resize"] += resized - decoded
        spent["encode"] += clock() - resized
    spent["all three"] = sum(spent.values())
    return {stage: len(photos) / seconds for stage, seconds in spent.items()}


def write_forms(files: list[Path], dest: Path, classes: int) -> tuple[Path, Path]:
    """The photos spread over ``classes`` classes as a tar of class tars and as the folders
    ``train/<class>/`` it would extract to; returns (the tar, the folder)."""
    folder, tar_path = dest / "folders", dest / "train.tar"
    groups: dict[str, list[Path]] = {}
    for k, path in enumerate(files):
        groups.setdefault(f"class{k % classes:03d}", []).append(path)
    with tarfile.open(tar_path, "w") as outer:
        for name, members in groups.items():
            (folder / "train" / name).mkdir(parents=True)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for path in members:
                    (folder / "train" / name / path.name).write_bytes(path.read_bytes())
                    inner.add(path, arcname=path.name)
            info = tarfile.TarInfo(f"{name}.tar")
            info.size = len(buf.getvalue())
            outer.addfile(info, io.BytesIO(buf.getvalue()))
    return tar_path, folder


def end_to_end(
    sources: dict[str, Path], dest: Path, workers: int, rounds: int, count: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], bool]:
    """Images/s of ``prepare`` from each source, interleaved, and images per CPU second (all
    processes: the listing and packing workers included); whether the outputs are equal."""
    per_cpu: dict[str, list[float]] = {name: [] for name in sources}

    def timed(name: str) -> Callable[[], float]:
        def once() -> float:
            out = dest / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)  # this bench's own output of the last round
            start, cpu = time.perf_counter(), _cpu_seconds()
            with redirect_stdout(io.StringIO()):
                prepare(Request((sources[name],), out, workers=workers, expect="none"))
            per_cpu[name].append(count / (_cpu_seconds() - cpu))
            return count / (time.perf_counter() - start)

        return once

    rates = interleaved({name: timed(name) for name in sources}, rounds)
    first, second = (dest / f"out-{name}" for name in sources)
    names = ["stats.npz", "train/index.npy"]
    names += [f"train/{p.name}" for p in sorted((first / "train").glob("*.bin"))]
    same = all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    return rates, per_cpu, same


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the pools' workers)."""
    try:
        import resource
    except ImportError:  # not on Windows: this process alone
        return time.process_time()
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace) -> int:
    if min(args.workers, args.classes, args.rounds, args.limit or 1) < 1:
        raise UserError("--workers, --classes, --rounds and --limit must be at least 1")
    files = sorted(p for p in Path(args.photos).glob("*/*") if p.is_file())[: args.limit]
    if not files:
        raise UserError(f"{args.photos} holds no <class>/<image> files: pass --photos FOLDER")
    print(f"hardware: {hardware()}")
    print(f"photos: {len(files)} from {args.photos}; JPEG q95 4:4:4, 256x256, shorter side")
    storage = Storage()
    stages = stage_rates([p.read_bytes() for p in files], storage)
    print(f"{'one core, in memory':<28} {'per CPU s':>9}")
    for stage, rate in stages.items():
        print(f"{stage:<28} {rate:>9.1f}")
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-prepare-") as tmp:
        tar_path, folder = write_forms(files, Path(tmp), min(args.classes, len(files)))
        sources = {"archive": tar_path, "folders": folder}
        timed = end_to_end(sources, Path(tmp), args.workers, args.rounds, len(files))
    rates, per_cpu, same = timed
    print(f"prepare, {args.workers} workers, {args.rounds} interleaved rounds (medians)")
    print(f"{'source':<28} {'images/s':>9} {'per CPU s':>9}   images/s of each round")
    medians = {name: statistics.median(r) for name, r in rates.items()}
    cpu = {name: statistics.median(r) for name, r in per_cpu.items()}
    for name, r in rates.items():
        rounds = ", ".join(f"{x:.1f}" for x in r)
        print(f"{name:<28} {medians[name]:>9.1f} {cpu[name]:>9.1f}   {rounds}")
    ratio, cpu_ratio = medians["archive"] / medians["folders"], cpu["archive"] / cpu["folders"]
    print(f"archive / folders: {ratio:.3f} (per CPU second {cpu_ratio:.3f}); same output: {same}")
    per_core = {
        "the three steps (no I/O)": stages["all three"],
        "the archive path per CPU second": cpu["archive"],
    }
    print(f"projected hours for {IMAGENET:,} images (linear in cores)")
    for basis, rate in per_core.items():
        hours = ", ".join(f"{c} cores {IMAGENET / (rate * c) / 3600:.2f} h" for c in (8, 16))
        print(f"from {basis} ({rate:.1f} img/s per core): {hours}")
    return 0 if same else 1
