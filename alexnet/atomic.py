"""How this project writes a whole file: a temporary file, fsync, rename, fsync of the folder.

A reader (or a crash, or ``kill -9``) sees either the previous file or the complete new one,
never a partial file. Files that grow instead are written otherwise: the run's append-only
``metrics.jsonl`` and TensorBoard events (``log.py``), and the memory-mapped rows of a features
file, which pass through the same kind of hidden temporary file before ``save_npz`` here.
The temporary file is hidden in the same folder and named ``.<name>.<random>.tmp``; if the
writing process is killed, ``remove_temp_files`` (called when a run starts or resumes) deletes
what it left behind.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

# .<name>.<12 hex digits>.tmp: the pattern of our temporary files, and only of them.
TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a hidden temporary file beside ``path``; on a clean exit it replaces ``path``.

    The data is flushed and fsynced before the rename, and the folder is fsynced after it.
    On an exception the temporary file is removed and ``path`` is left as it was. Parent
    folders are created. The file gets mode 0o666 minus the umask, like ``open``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary file that atomically becomes ``path``."""
    with atomic_open(path, "wb") as f:
        write(f)


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def save_npz(path: str | Path, **arrays: Any) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; returns what was removed.

    Only names of our own pattern (``.<name>.<12 hex digits>.tmp``) are touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if TEMP_FILE.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
