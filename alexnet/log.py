"""Run records: console lines, a JSON-lines metrics file and TensorBoard events (rank 0 only).

Named ``log.py`` (not ``logging.py``) so it never shadows the standard library.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

# Held while descriptor 2 is redirected to catch the JPEG decoder's warnings (data/records.py),
# and while a console line is written: a line of another thread landing in that window would
# be taken for a warning about the image being decoded.
STDERR = threading.RLock()


def info(message: str, enabled: bool = True) -> None:
    """One console line that does not break an active tqdm bar."""
    if enabled:
        with STDERR:
            tqdm.write(message, file=sys.stderr)


class RunLog:
    """Scalars go to ``metrics.jsonl`` and TensorBoard; a disabled log (other ranks) is a no-op.

    A write that fails (a full disk) does not raise: the records stop, ``problem`` says why, and
    the run's next checkpoint (``Session.save``) stops the run in one line on every process,
    without writing, so that the resumed run records the steps again.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.problem: str | None = None
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        self.jsonl = open(self.path, "ab", buffering=0)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    @property
    def writing(self) -> bool:
        """This process records, and no write has failed yet."""
        return self.enabled and self.problem is None

    @contextlib.contextmanager
    def failures(self, what: str | Path) -> Iterator[None]:
        """Keep the first ``OSError`` of writing ``what`` in ``problem``, and say so once."""
        try:
            yield
        except OSError as err:
            if self.problem is None:
                self.problem = f"could not write {what}: {err.strerror or err}"
                info(f"warning: {self.problem}; the run stops at its next checkpoint")

    def scalars(self, kind: str, step: int, values: dict[str, float], **extra: Any) -> None:
        """Record ``values`` under ``kind/<name>`` at global ``step`` (images seen / batch size)."""
        if not self.writing:
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3), **extra}
        row.update(
            {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()}
        )
        with self.failures(self.path):
            self._append((json.dumps(row) + "\n").encode())
        if self.writer is not None and self.writing:
            # the writer's thread raises a failed write at a later call (TensorBoard's _AsyncWriter)
            with self.failures(self.writer.log_dir):
                for name, value in values.items():
                    self.writer.add_scalar(f"{kind}/{name}", float(value), step)

    def _append(self, line: bytes) -> None:
        """All of ``line`` or nothing: a part of a line would break every reader of the file."""
        end = self.jsonl.seek(0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:  # an unbuffered write may take part of the bytes, then fail on the rest
                view = view[self.jsonl.write(view) :]
        except OSError:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                self.jsonl.truncate(end)
            raise

    def kernels(self, weight: torch.Tensor, step: int) -> None:
        """conv1's kernels as one image (the paper's Fig. 3), each kernel scaled to [0, 1]."""
        if not self.writing or self.writer is None:
            return
        from torchvision.utils import make_grid

        w = weight.detach().float().cpu()
        lo = w.amin(dim=(1, 2, 3), keepdim=True)
        hi = w.amax(dim=(1, 2, 3), keepdim=True)
        grid = make_grid((w - lo) / (hi - lo).clamp_min(1e-12), nrow=w.shape[0] // 8, padding=1)
        with self.failures(self.writer.log_dir):
            self.writer.add_image("conv1/kernels", grid, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()  # unbuffered: nothing is left to write
            if self.writer is not None:
                with self.failures(self.writer.log_dir):
                    self.writer.close()


def environment(devices: tuple[torch.device, ...], world_size: int) -> dict[str, Any]:
    """What produced a run: code version, library versions and hardware."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import torchvision

    names = [
        torch.cuda.get_device_name(d) if d.type == "cuda" else platform.processor() or "cpu"
        for d in devices
    ]
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "devices": [str(d) for d in devices],
        "device_names": names,
        "world_size": world_size,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "argv": sys.argv,
    }
