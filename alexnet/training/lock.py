"""One training run per run folder at a time.

Two runs writing one folder would overwrite each other's ``last.pt`` and could make the ranks of
a resumed DDP run start from different checkpoints. It happens more easily than it sounds:
``kill -9`` of torchrun's agent leaves its workers running (each is in its own session), and
``torchrun ... --resume auto`` started again would train beside them.

Rank 0 holds a POSIX record lock (``lockf``) on ``<run.dir>/.lock`` while it trains. The kernel
drops it when the process ends, however it ends, so a killed run never leaves a stale lock;
and unlike ``flock`` it is not inherited by forked loader workers, which outlive a killed
parent by a few seconds. Where ``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from alexnet.errors import UserError

LOCK = ".lock"
_HELD: dict[str, int] = {}  # run folder -> descriptor of its lock file, while this process trains


def hold(run_dir: Path) -> None:
    """Take ``run_dir``'s lock for this process (until ``release``).

    Raises:
        UserError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:
        return
    if str(run_dir) in _HELD:
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(
            f"another process is training in {run_dir} (it holds {run_dir / LOCK}); stop it "
            "(all of its processes: torchrun's workers outlive a killed torchrun), or choose "
            "another run.dir"
        ) from None
    _HELD[str(run_dir)] = fd


def release() -> None:
    """Let go of every lock this process holds."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()
