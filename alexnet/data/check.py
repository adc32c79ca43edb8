"""``python -m alexnet.prepare --check DATA``: read every record of a prepared set and name each
bad one (split, shard, record, source image).

Each shard is one job for a pool of worker processes; a record is checked as the loaders check
it (``PackedSplit.read``): all its bytes there and their CRC-32 the one stored by prepare. Sets
prepared before records carried checksums (format 1) are said to be so and checked the only
way left: every JPEG is decoded, a decoder warning counting as damage.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from alexnet.data.packed import PackedSplit, read_meta
from alexnet.data.records import BadRecord, CorruptRecord


def check_data(root: Path, workers: int = 1, progress: bool = True) -> int:
    """Check every record of every split of the prepared set ``root``; print one line per bad
    record and a summary. Returns the exit code: 0 all good, 1 some record is bad.

    Raises:
        UserError: ``root`` is not a prepared data set.
    """
    start = time.perf_counter()
    meta = read_meta(root)
    jobs: list[tuple[Path, str, int]] = []
    counts: dict[str, int] = {}
    for split in meta["splits"]:
        index = PackedSplit(root, split).index
        counts[split] = len(index)
        jobs += [(root, split, int(shard)) for shard in np.unique(index[:, 0])]
    decoding = meta["version"] < 2 and meta["encoding"] == "jpeg"
    if meta["version"] < 2:
        how = "decoding every JPEG instead" if decoding else "checking record lengths only"
        print(f"note: {root} carries no checksums (prepared before format 2): {how}")
    bad: list[BadRecord] = []
    total = sum(counts.values())
    with tqdm(total=total, unit="rec", desc="check", disable=None if progress else True) as bar:
        for found, done in _run(jobs, workers):
            for b in found:
                tqdm.write(f"bad: {b.describe()}", file=sys.stdout)
            bad += found
            bar.update(done)
    seconds = time.perf_counter() - start
    per_split = " + ".join(f"{n:,} {split}" for split, n in counts.items())
    shards = len(jobs)
    if not bad:
        print(
            f"checked {per_split} records in {shards} shards of {root} in {seconds:.1f} s: all good"
        )
        return 0
    where = sorted({b.shard for b in bad})
    shown = ", ".join(where[:5]) + (" ..." if len(where) > 5 else "")
    print(
        f"checked {per_split} records in {shards} shards of {root} in {seconds:.1f} s: "
        f"{len(bad)} bad, in {shown}. To rebuild those shards, delete their .npz unit records "
        "and run the same prepare command again (it redoes only those units); or train with "
        "--set data.on_corrupt=skip"
    )
    return 1


def _run(jobs: list[tuple[Path, str, int]], workers: int) -> Iterator[tuple[list[BadRecord], int]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(check_shard, jobs)
        return
    with multiprocessing.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(check_shard, jobs)


def check_shard(job: tuple[Path, str, int]) -> tuple[list[BadRecord], int]:
    """The bad records of one shard (root, split, shard number), and how many it holds."""
    root, name, shard = job
    split = PackedSplit(root, name)
    rows = np.flatnonzero(split.index[:, 0] == shard)
    decode = not split.has_checksums and split.encoding == "jpeg"
    found = []
    for i in rows.tolist():
        try:
            split.image(i) if decode else split.read(i)
        except CorruptRecord as err:
            assert err.bad is not None
            found.append(err.bad)
    return found, len(rows)
