"""Tar archives read in place: the headers once, then any member's bytes by its offset.

ILSVRC-2012's archives are plain (uncompressed) tars, so every member's data is one contiguous
byte range of the file. Listing the headers (``tarfile`` seeks past the data of each member)
gives every image's offset and size; a worker then reads an image with one ``os.pread``, and
nothing is extracted. An inner tar (the training archive holds one tar per class) is listed
through a ``Window`` on the outer file, so its members' offsets are offsets into the outer file.

A listing checks that the tar is complete: ``tarfile`` quietly stops at a header cut short or
unreadable, so the end-of-archive block (512 zero bytes) must follow the last member.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from alexnet.errors import UserError

BLOCK = tarfile.BLOCKSIZE  # 512: headers, and the end-of-archive marker, are whole blocks
GZIP_MAGIC = b"\x1f\x8b"
# The published MD5 sums of the ILSVRC-2012 downloads, as torchvision lists them
# (torchvision/datasets/imagenet.py, ARCHIVE_META; the same sums as image-net.org's download page).
PUBLISHED_MD5 = {
    "train": ("ILSVRC2012_img_train.tar", "1d675b47d978889d74fa0da5fadfb00e"),
    "val": ("ILSVRC2012_img_val.tar", "29b22e2961454d5413ddabcf34fc5622"),
    "devkit": ("ILSVRC2012_devkit_t12.tar.gz", "fa75699e90414af021442c21a62c3abf"),
}


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a tar: its name (a leading ``./`` removed) and where its data lies."""

    name: str
    offset: int  # of the data, in bytes from the start of the (outer) file
    size: int
    regular: bool  # a regular file (not a folder, link or sparse file)


class Window(io.RawIOBase):
    """Bytes ``[start, start + size)`` of an open file descriptor, as a read-only seekable file.

    Reads use ``os.pread``, so windows on one descriptor never disturb each other.
    """

    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self.fd, self.start, self.size, self.pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self.size - self.pos))
        data = _pread(self.fd, n, self.start + self.pos) if n else b""
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def list_tar(fd: int, start: int, size: int, label: str) -> list[Member]:
    """Every member of the tar in bytes ``[start, start + size)`` of ``fd``, in stored order.

    Raises:
        UserError: not a tar, or a tar cut short or damaged (``label`` names it).
    """
    window = Window(fd, start, size)
    members = []
    try:
        with tarfile.open(fileobj=window, mode="r:") as tar:
            for info in tar:
                name = info.name[2:] if info.name.startswith("./") else info.name
                regular = info.isreg() and not info.issparse()
                members.append(Member(name, start + info.offset_data, info.size, regular))
            end = tar.offset  # where the header after the last member would start
    except tarfile.ReadError as err:
        if not members and "end of data" not in str(err):
            raise UserError(f"{label} is not a tar archive ({err})") from None
        raise UserError(f"{label} is truncated: {_again}") from None
    if end + BLOCK > size:
        raise UserError(f"{label} is truncated (it ends at byte {size:,}): {_again}")
    window.seek(end)
    if window.read(BLOCK).strip(b"\0"):
        raise UserError(f"{label} is damaged (an unreadable header at byte {end:,}): {_again}")
    return members


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``os.pread``, or a seek and a read where there is none (Windows): a descriptor here
    belongs to one process and one thread, so nothing else moves its position between them."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


_again = "download it again (--verify compares it with the published MD5 sum)"


@contextmanager
def open_file(path: Path) -> Iterator[int]:
    """A read-only file descriptor of ``path``; a missing or unreadable file is a UserError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def read_at(fd: int, offset: int, size: int, label: str) -> bytes:
    """``size`` bytes at ``offset`` of ``fd``; a file that ends sooner is a UserError."""
    data = _pread(fd, size, offset)
    while len(data) < size:  # pread may return less on some file systems; EOF returns b""
        more = _pread(fd, size - len(data), offset + len(data))
        if not more:
            raise UserError(f"{label} ends before the data of a member: the file is truncated")
        data += more
    return data


def kind_of(path: Path) -> str:
    """What an ILSVRC-2012 download is, from its first bytes: "devkit" (a gzip file), "train"
    (a tar whose first file is a tar) or "val" (a tar whose first file is something else)."""
    with open_file(path) as fd:
        head = _pread(fd, len(GZIP_MAGIC), 0)
        if head.startswith(GZIP_MAGIC):
            return "devkit"
        try:
            with tarfile.open(fileobj=Window(fd, 0, os.fstat(fd).st_size), mode="r:") as tar:
                first = next((m for m in tar if m.isreg()), None)
        except tarfile.ReadError:
            first = None
    if first is None:
        raise UserError(
            f"{path} is neither a tar archive nor a .tar.gz: expected the ILSVRC-2012 downloads "
            + ", ".join(name for name, _ in PUBLISHED_MD5.values())
        )
    return "train" if first.name.endswith(".tar") else "val"


def md5sum(path: Path, bar: tqdm | None = None, chunk: int = 1 << 22) -> str:
    """The MD5 of a file, read in 4 MiB chunks (``bar`` counts the bytes)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    return digest.hexdigest()


def verify(archives: dict[str, Path]) -> None:
    """Compare each archive's MD5 with the published one (kind -> path); one UserError naming
    every file that differs, before any other work."""
    total = sum(p.stat().st_size for p in archives.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="md5", disable=None) as bar:
        sums = {kind: md5sum(path, bar) for kind, path in archives.items()}
    bad = [
        f"{archives[kind]} has MD5 {got}, the published {PUBLISHED_MD5[kind][0]} has "
        f"{PUBLISHED_MD5[kind][1]}"
        for kind, got in sums.items()
        if got != PUBLISHED_MD5[kind][1]
    ]
    if bad:
        raise UserError("; ".join(bad) + ": the download is damaged or incomplete, fetch it again")
