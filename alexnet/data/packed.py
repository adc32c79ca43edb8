"""The prepared data set on disk: 256x256 images packed into shard files, with an index.

Layout of a prepared folder (written by ``alexnet.prepare``, read by the loaders)::

    meta.json            {"format": "alexnet-packed", "version": 2, "encoding": "jpeg" | "raw",
                          "image_size": 256, "classes": [wnid, ...],
                          "class_names": [words, ...] (optional: older sets lack it),
                          "splits": {"train": {"count": N, "shards": ["train/x.bin", ...]}, ...}}
    <split>/index.npy    int64 (N, 5): shard number, byte offset, byte length, label, and the
                         CRC-32 (zlib's) of the record's bytes; version 1 sets have no checksum
                         column and still load, unchecked
    <split>/*.bin        shards: concatenated JPEG files (encoding jpeg, RGB, 4:4:4) or raw
                         256x256x3 uint8 HWC images (encoding raw)
    stats.npz            the training split's per-pixel mean image and RGB covariance (0-255)
    report.json          what prepare converted, skipped or found missing

One record is one contiguous byte range, so a random read is one memory-mapped slice and a
sequential pass reads each shard front to back. ``meta.json`` is written last, atomically: a
folder without it is an unfinished preparation, never mistaken for a complete one.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet import atomic
from alexnet.data.records import BadRecord, CorruptRecord, DecodeError, decode_jpeg_strict
from alexnet.errors import UserError

FORMAT = "alexnet-packed"
VERSION = 2  # what prepare writes; 2 added a checksum to every record
INDEX_COLUMNS = {1: 4, 2: 5}  # version -> shard, offset, length, label[, crc32]
CRC_COLUMN = 4


@dataclass(frozen=True)
class Stats:
    """Training-set pixel statistics on the raw 0-255 RGB scale (paper §2 and §4.1)."""

    mean: np.ndarray  # (3, S, S) float64, the per-pixel mean image
    cov: np.ndarray  # (3, 3) float64, covariance of RGB pixel values
    eigval: np.ndarray  # (3,) eigenvalues of cov, descending
    eigvec: np.ndarray  # (3, 3) columns are the matching unit eigenvectors
    pixels: int  # number of pixels the covariance was computed over


def eig_descending(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric 3x3 matrix."""
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return eigval[order], eigvec[:, order]


def save_stats(root: Path, mean: np.ndarray, cov: np.ndarray, pixels: int) -> Stats:
    eigval, eigvec = eig_descending(cov)
    stats = Stats(mean=mean, cov=cov, eigval=eigval, eigvec=eigvec, pixels=pixels)
    atomic.save_npz(
        root / "stats.npz",
        mean=mean,
        cov=cov,
        eigval=eigval,
        eigvec=eigvec,
        pixels=np.int64(pixels),
    )
    return stats


def load_stats(root: str | Path) -> Stats:
    path = Path(root) / "stats.npz"
    if not path.is_file():
        raise UserError(f"{path} is missing: prepare the data set with `python -m alexnet.prepare`")
    with np.load(path) as z:
        return Stats(z["mean"], z["cov"], z["eigval"], z["eigvec"], int(z["pixels"]))


def read_meta(root: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json``; a clear ``UserError`` if the folder is not a prepared set."""
    root = Path(root)
    path = root / "meta.json"
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist (set data.root, or run `make prepare`)")
    if not path.is_file():
        raise UserError(
            f"{root} is not a prepared data set (no meta.json): run "
            f"`python -m alexnet.prepare SOURCE {root}` first, or finish an interrupted run"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable: {err}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an {FORMAT} data set (found {meta.get('format')!r})")
    if meta.get("version") not in INDEX_COLUMNS:
        raise UserError(
            f"{path}: {FORMAT} version {meta.get('version')!r}, which this alexnet does not "
            f"read (it reads {', '.join(map(str, INDEX_COLUMNS))}); prepare the data again"
        )
    return meta


class PackedSplit:
    """Random access to one split of a prepared data set.

    Shards are memory-mapped lazily, so the object pickles cheaply into DataLoader workers.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        meta = read_meta(self.root)
        if split not in meta["splits"]:
            have = ", ".join(sorted(meta["splits"])) or "none"
            raise UserError(f"{self.root} has no split {split!r} (it has: {have})")
        self.split = split
        self.classes: list[str] = list(meta["classes"])
        # names in words ("tench, Tinca tinca"); sets prepared before they were stored: the ids
        self.class_names: list[str] = list(meta.get("class_names") or self.classes)
        self.encoding: str = meta["encoding"]
        self.image_size: int = int(meta["image_size"])
        self.resize: str = meta.get("resize", "shorter_side")  # or warp (Caffe); older: §2
        self.shard_paths = [self.root / s for s in meta["splits"][split]["shards"]]
        self.version: int = meta["version"]
        self.index = np.load(self.root / split / "index.npy")
        if self.index.shape != (meta["splits"][split]["count"], INDEX_COLUMNS[self.version]):
            raise UserError(
                f"{self.root / split / 'index.npy'} does not match meta.json; re-run prepare"
            )
        self.labels = torch.from_numpy(self.index[:, 3].copy())
        self._maps: dict[int, np.memmap] = {}  # shard number -> mapping, opened on first use

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    @property
    def has_checksums(self) -> bool:
        """Whether the index holds a CRC-32 of every record (sets prepared since version 2)."""
        return self.version >= 2

    def checksum(self, i: int) -> int | None:
        """The CRC-32 (``zlib.crc32``) that record ``i``'s bytes had when prepared, or None."""
        return int(self.index[i, CRC_COLUMN]) if self.has_checksums else None

    def raw(self, i: int) -> torch.Tensor:
        """The stored bytes of record ``i`` as a 1-D uint8 tensor (shares the mapped memory),
        unchecked; ``read`` checks them."""
        shard, offset, length = self.index[i, :3]
        if shard not in self._maps:  # lazily: ImageNet has ~2000 shards, most unused per worker
            # copy-on-write ("c"): views are writable for torch, the file itself is never modified
            self._maps[shard] = np.memmap(self.shard_paths[shard], dtype=np.uint8, mode="c")
        return torch.from_numpy(np.asarray(self._maps[shard][offset : offset + length]))

    def read(self, i: int, verify: bool = True) -> torch.Tensor:
        """Record ``i``'s bytes, checked: all there and, with ``verify``, matching the CRC-32
        stored when the set was prepared (sets without checksums: length only).

        Raises:
            CorruptRecord: naming the record, its shard and its source image.
        """
        try:
            data = self.raw(i)
        except (OSError, ValueError) as err:  # missing, unreadable or empty shard file
            raise self.corrupt(i, f"shard unreadable ({err})") from None
        length = int(self.index[i, 2])
        if data.numel() != length:
            end = int(self.index[i, 1]) + length
            raise self.corrupt(i, f"shard truncated (record ends at byte {end:,})")
        if verify and self.has_checksums:
            found = zlib.crc32(data.numpy())
            if found != self.checksum(i):
                raise self.corrupt(
                    i, f"checksum mismatch (CRC-32 {found:08x}, stored {self.checksum(i):08x})"
                )
        return data

    def image(self, i: int, verify: bool = True) -> torch.Tensor:
        """Record ``i`` decoded to a (3, S, S) uint8 RGB tensor, its bytes checked as ``read``
        does and a decoder warning treated as an error (``CorruptRecord``)."""
        data = self.read(i, verify)
        if self.encoding == "raw":
            s = self.image_size
            return data.view(s, s, 3).permute(2, 0, 1)
        try:
            image = decode_jpeg_strict(data)
        except DecodeError as err:
            raise self.corrupt(i, f"JPEG decoder: {err}") from None
        assert isinstance(image, torch.Tensor)
        return image

    def corrupt(self, i: int, reason: str) -> CorruptRecord:
        """The error naming record ``i`` (split, shard, record in the shard, source image)."""
        bad = self.locate(i, reason)
        return CorruptRecord(bad.describe(), bad)

    def locate(self, i: int, reason: str = "") -> BadRecord:
        """Where record ``i`` lives and came from. The source name and the record's number in
        its shard come from the unit record prepare leaves beside each shard (its lengths give
        the offsets); without one, the number is counted from this index."""
        shard, offset = int(self.index[i, 0]), int(self.index[i, 1])
        path = self.shard_paths[shard]
        position, source = int(np.sum(self.index[:i, 0] == shard)), None
        try:
            with np.load(path.with_suffix(".npz")) as z:
                names, lengths = z["name"], z["length"]
            position = int(np.searchsorted(np.cumsum(lengths) - lengths, offset))
            origin = json.loads((self.root / "report.json").read_text()).get("source")
            source = f"{origin}/{names[position]}" if origin else str(names[position])
        except Exception:  # a missing or damaged unit record: the name is a courtesy
            pass
        rel = path.relative_to(self.root).as_posix()
        return BadRecord(self.split, i, rel, position, source, reason)
