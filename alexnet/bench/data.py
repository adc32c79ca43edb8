"""``python -m alexnet.bench data``: images/s of the loaders, ImageFolder and the encodings.

Measures each training loader path on a prepared data set, beside torchvision's ImageFolder +
PIL pipeline on the original JPEG tree, and compares reading the packed JPEG and raw encodings.
Each figure is printed with the hardware it was measured on.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alexnet import atomic
from alexnet.bench.common import hardware
from alexnet.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from alexnet.data import packed
from alexnet.data.loaders import TrainLoader
from alexnet.errors import UserError
from alexnet.runtime import Placement, available_cpus

WARMUP = 3  # batches fetched before timing starts (worker start-up, first touches of memory)


def _rate(batches: Iterator, steps: int, label: str, sync: Callable[[], None]) -> float:
    """Images/s over ``steps`` batches of ``batches``, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        next(batches)
    sync()
    start, images = time.perf_counter(), 0
    for _ in tqdm(range(steps), desc=label, disable=None, leave=False):
        images += len(next(batches)[1])
    sync()
    return images / (time.perf_counter() - start)


def loader_rate(
    root: Path, split: str, loader: str, workers: int, batch: int, steps: int, verify: bool = True
) -> float:
    """Images/s of ``TrainLoader`` (paper augmentation and normalisation) on the best device,
    checking each record's CRC-32 or not (``verify``).

    Without a GPU the main process finishes batches on the CPU; it then gets the cores the
    workers leave (OpenMP threads competing with busy workers make it several times slower).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = DataConfig(root=root, loader=loader, workers=workers, verify_checksums=verify)
    train = TrainConfig(batch_size=batch, seed=0, steps_per_epoch=WARMUP + steps)
    split_data, stats = packed.PackedSplit(root, split), packed.load_stats(root)
    tl = TrainLoader(
        split_data, stats, cfg, AugmentConfig(), train, ModelConfig(), Placement(device)
    )
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(max(1, available_cpus() - workers))
    try:
        return _rate(tl.epoch(0), steps, f"{loader} loader", sync)
    finally:
        torch.set_num_threads(threads)
        tl.close()


def imagefolder_rate(raw: Path, workers: int, batch: int, steps: int) -> float:
    """Images/s of torchvision's classic pipeline on the original JPEGs, same augmentation."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(256),
            transforms.RandomCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    try:
        folder = datasets.ImageFolder(str(raw), transform=tf)
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"--raw {raw}: not a <class>/<image> folder tree ({err})") from None
    if len(folder) < batch:
        raise UserError(f"--raw {raw} has {len(folder)} images, fewer than one batch of {batch}")
    loader = torch.utils.data.DataLoader(
        folder,
        batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
    forever = itertools.chain.from_iterable(itertools.repeat(loader))
    return _rate(forever, steps, "ImageFolder", lambda: None)


def warm_cache(paths: list[Path], label: str) -> str:
    """Read files once so that every pipeline is timed from the page cache, if they fit."""
    total = sum(p.stat().st_size for p in paths)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if total > ram // 2:
        return f"{label}: {total / 2**30:.1f} GiB, over half the RAM: not pre-read (disk speed)"
    with tqdm(
        total=total, desc=f"reading {label}", unit="B", unit_scale=True, disable=None, leave=False
    ) as bar:
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    bar.update(len(chunk))
    return f"{label}: {total / 2**20:.0f} MiB pre-read into the page cache"


def write_sample(
    src: packed.PackedSplit, indices: Iterable[int], dest: Path, encoding: str
) -> packed.PackedSplit:
    """Copy records of ``src`` into a one-shard prepared folder ``dest``, in ``encoding``."""
    from torchvision.io import encode_jpeg

    (dest / "train").mkdir(parents=True)
    rows, offset = [], 0
    with open(dest / "train" / "000.bin", "wb") as f:
        for i in indices:
            if encoding == src.encoding:
                data = src.raw(i)
            elif encoding == "raw":
                data = src.image(i).permute(1, 2, 0).contiguous()
            else:
                data = encode_jpeg(src.image(i), quality=95)
            f.write(data.numpy().tobytes())
            crc = zlib.crc32(data.numpy().tobytes())
            rows.append((0, offset, data.numel(), int(src.labels[i]), crc))
            offset += data.numel()
    np.save(dest / "train" / "index.npy", np.array(rows, dtype=np.int64))
    splits = {"train": {"count": len(rows), "shards": ["train/000.bin"]}}
    meta = {
        "format": packed.FORMAT,
        "version": packed.VERSION,
        "encoding": encoding,
        "image_size": src.image_size,
        "classes": src.classes,
        "splits": splits,
    }
    atomic.write_json(dest / "meta.json", meta)
    return packed.PackedSplit(dest, "train")


def format_rates(src: packed.PackedSplit, count: int) -> list[tuple[str, float, float, float]]:
    """(encoding, sequential img/s, random-order img/s, KiB per image) over ``count`` records
    decoded to contiguous (3, S, S) uint8 by one thread, after one untimed pass."""
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(src), size=min(count, len(src)), replace=False).tolist())
    out, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker; keeps OpenMP hand-offs out of the timing
    try:
        with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp:
            for encoding in ("jpeg", "raw"):
                split = write_sample(src, sample, Path(tmp) / encoding, encoding)
                n, rates = len(split), []
                for order in (range(n), range(n), rng.permutation(n)):  # untimed, seq, random
                    start = time.perf_counter()
                    for i in order:
                        split.image(int(i), verify=False).contiguous()
                    rates.append(n / (time.perf_counter() - start))
                out.append((encoding, rates[1], rates[2], split.index[:, 2].mean() / 1024))
    finally:
        torch.set_num_threads(threads)
    return out


def checksum_cost(src: packed.PackedSplit, count: int) -> tuple[float, float, float]:
    """(CRC-32 us, decode us, KiB) per record, one thread, over ``count`` records of ``src``
    in the page cache (best of three passes each): what ``data.verify_checksums`` adds to
    reading a record, against decoding it."""
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(src), size=min(count, len(src)), replace=False).tolist())
    records = [src.raw(i).numpy() for i in sample]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        crc = _best(lambda: [zlib.crc32(r) for r in records]) / len(records)
        decode = _best(lambda: [src.image(i, verify=False) for i in sample]) / len(sample)
    finally:
        torch.set_num_threads(threads)
    return 1e6 * crc, 1e6 * decode, sum(len(r) for r in records) / len(records) / 1024


def _best(work: Callable[[], object], passes: int = 3) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="a folder written by alexnet.prepare")
    p.add_argument("--split", default="train", help="split to read (default: train)")
    p.add_argument("--raw", type=Path, help="original JPEG tree (<class>/<image>) for ImageFolder")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="loader worker processes (default: min(8, CPUs))",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    p.add_argument(
        "--steps",
        type=int,
        default=50,
        help=f"timed batches per pipeline after {WARMUP} warm-up (default: 50)",
    )
    p.add_argument(
        "--format-images",
        type=int,
        default=500,
        help="records copied for the encoding comparison (default: 500)",
    )


def pipelines(args: argparse.Namespace) -> list[tuple[str, int, str, float]]:
    """(name, workers, where the batches end up, images/s) of each pipeline ``run`` times."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timed = (args.batch_size, args.steps)
    rows = [
        (
            "packed, cpu loader",
            args.workers,
            device,
            loader_rate(args.data, args.split, "cpu", args.workers, *timed),
        ),
        (
            "packed, cpu loader, checksums off",
            args.workers,
            device,
            loader_rate(args.data, args.split, "cpu", args.workers, *timed, verify=False),
        ),
    ]
    if device == "cuda":
        rows.append(
            (
                "packed, gpu loader (batched nvJPEG)",
                0,
                device,
                loader_rate(args.data, args.split, "gpu", 0, *timed),
            )
        )
    if args.raw is not None:
        rows.append(
            (
                "ImageFolder + PIL (original JPEGs)",
                args.workers,
                "cpu",
                imagefolder_rate(args.raw, args.workers, *timed),
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.batch_size < 1 or args.steps < 1 or args.format_images < 1:
        raise UserError("--workers must be >= 0; --batch-size, --steps, --format-images >= 1")
    split = packed.PackedSplit(args.data, args.split)
    print(f"hardware: {hardware()}")
    print(
        f"data: {args.data} ({split.split}: {len(split)} images, {split.encoding}); batch "
        f"{args.batch_size}, {args.steps} timed steps after {WARMUP} warm-up"
    )
    print(warm_cache(split.shard_paths, "packed shards"))
    if args.raw is not None:
        files = [p for p in Path(args.raw).rglob("*") if p.is_file()]
        print(warm_cache(files, "ImageFolder tree"))
    rows = pipelines(args)
    print(f"{'pipeline':<38} {'workers':>7} {'output on':>9} {'images/s':>10}")
    for name, workers, where, rate in rows:
        print(f"{name:<38} {workers:>7} {where:>9} {rate:>10.1f}")
    count = min(args.format_images, len(split))
    crc, decode, kib = checksum_cost(split, count)
    print(
        f"checksums: CRC-32 {crc:.1f} us per record ({kib:.1f} KiB), decoding it {decode:.1f} us "
        f"({100 * crc / decode:.1f} %); a batch of {args.batch_size}: "
        f"{args.batch_size * crc / 1000:.2f} ms of CPU time, spread over the loader's workers"
    )
    print(f"encodings: one thread decoding to uint8, {count} records in the page cache")
    print(f"{'encoding':<10} {'sequential img/s':>17} {'random img/s':>13} {'KiB/image':>10}")
    for encoding, seq, rnd, kib in format_rates(split, args.format_images):
        print(f"{encoding:<10} {seq:>17.1f} {rnd:>13.1f} {kib:>10.1f}")
    return 0
