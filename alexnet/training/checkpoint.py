"""Checkpoints: atomic, versioned ``torch.save`` dicts that load with ``weights_only=True``.

A run directory holds two files:
    ``last.pt``  the latest state, rewritten during training; ``--resume`` starts from it.
    ``best.pt``  the state with the lowest validation error so far.

The payload is a plain dict chosen by the trainer (model and optimizer state dicts, schedule
state, epoch, step, config as plain data, ``rng_state()``). ``save_checkpoint`` refuses values
that ``torch.load(weights_only=True)`` could not read back (a ``Path``, a dataclass, a numpy
array), so a run never discovers at resume time that its checkpoints are unreadable.
"""

from __future__ import annotations

import pickle
import random
import re
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from alexnet.atomic import atomic_write
from alexnet.errors import UserError

FORMAT = "alexnet-checkpoint"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"

# Types torch.load(weights_only=True) reads back without an allow-list.
_CORRUPT = "{path} is not a readable checkpoint (truncated or corrupt?)"
_SCALARS = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus ``{"format", "version"}`` to ``path`` atomically.

    Written with ``alexnet.atomic``: a crash at any point leaves either the previous file or the
    new one at ``path``, never a partial file. Parent directories are created.

    Raises:
        TypeError: a value in ``payload`` could not be loaded with ``weights_only=True``.
        OSError: the file could not be written (a full disk: ``errno.ENOSPC``); ``path`` is
            left as it was.
    """
    _check_safe(payload, "payload")
    atomic_write(path, lambda f: _save({**payload, "format": FORMAT, "version": VERSION}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (with ``weights_only=True``).

    Raises:
        UserError: the file is missing, a directory, unreadable, corrupt, not ours, or of an
            unsupported version; one sentence with a suggestion.
    """
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / LAST}?" if (path / LAST).is_file() else ""
        raise UserError(f"{path} is a directory, not a checkpoint file{hint}")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise UserError(_CORRUPT.format(path=path)) from None
        raise UserError(
            f"{path} is not an alexnet checkpoint: it holds Python objects ({found.group(1)}) "
            "that are not loaded for safety; it was probably written by another training script"
        ) from None
    except Exception:  # zip, EOF, OS (bad seek), key, pickle errors: a damaged file
        raise UserError(_CORRUPT.format(path=path)) from None
    _check_ours(path, data)
    return data


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/last.pt`` if it exists, else None (``best.pt`` is never used to resume)."""
    last = Path(run_dir) / LAST
    return last if last.is_file() else None


def rng_state() -> dict[str, Any]:
    """The Python, numpy, torch CPU and CUDA random states, as weights_only-safe values.

    CUDA states (one per visible device) are captured only once CUDA is initialised, so that
    saving never creates a CUDA context; otherwise ``"cuda"`` is an empty list.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by ``rng_state()`` (in this process).

    Saved CUDA states are restored for as many devices as are visible now; extra ones are
    ignored.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    nps = state["numpy"]
    keys = nps["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((nps["name"], keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda", [])
    if cuda and torch.cuda.is_available():
        for index, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device=index)


# --- helpers ----------------------------------------------------------------------------------


class _Writes:
    """The file ``torch.save`` writes to, keeping the ``OSError`` a write raised: torch reports
    it as a RuntimeError about zip positions ("unexpected pos 704 vs 598"), which would hide
    that the disk is full."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _save(obj: dict[str, Any], f: IO[bytes]) -> None:
    writes = _Writes(f)
    try:
        torch.save(obj, writes)
    except RuntimeError:
        if writes.error is not None:
            raise writes.error from None
        raise


def _check_safe(value: Any, where: str) -> None:
    """Raise TypeError naming the first value weights_only loading would refuse.

    Types are matched exactly: subclasses such as ``numpy.float64`` (a float), a namedtuple or
    a ``defaultdict`` are pickled by class and refused by ``weights_only=True``.
    """
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _SCALARS or kind is torch.Size:
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: use str or int")
            _check_safe(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_safe(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) "
        "cannot read back; store plain data (str, numbers, lists, dicts, tensors) instead, "
        "e.g. str(path), float(x) or dataclasses.asdict(cfg)"
    )


def _check_ours(path: Path, data: Any) -> None:
    if isinstance(data, dict) and data.get("format") == FORMAT:
        version = data.get("version")
        if version == VERSION:
            return
        if isinstance(version, int) and version > VERSION:
            raise UserError(
                f"{path} is checkpoint version {version}, newer than this alexnet reads "
                f"({VERSION}); update alexnet to load it"
            )
        raise UserError(
            f"{path} is checkpoint version {version!r}, which this alexnet (version {VERSION}) "
            "no longer reads; retrain, or load it with the release that wrote it"
        )
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        why = (
            "it looks like a bare state dict, such as torchvision weights, with no config or "
            "optimizer state; pass a last.pt or best.pt written by alexnet.train"
        )
    elif isinstance(data, dict):
        keys = ", ".join(sorted(str(k) for k in data)[:6])
        why = (
            f"it looks like another program's checkpoint (keys: {keys}); "
            "alexnet.train writes last.pt and best.pt"
        )
    else:
        why = f"it holds a {type(data).__name__}, not a checkpoint dict"
    raise UserError(f"{path} is not an alexnet checkpoint ({why})")
