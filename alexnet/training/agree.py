"""What the processes of a DDP run must decide together, so that one process's trouble stops
all of them at the same point instead of leaving the others waiting in a collective forever:
a corrupt record in one rank's batch, a checkpoint that rank 0 could not write, images that
one rank could not score, a checkpoint the ranks resumed from in different states.

All of it travels over a gloo group on the host (the run's own group when it is gloo, else one
made for this on first use), so no GPU stream waits. Each function is a no-op for one process
and must be called by every rank at the same point.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from alexnet.errors import UserError
from alexnet.runtime import Runtime

_HOST_GROUP: list[Any] = []  # [group] once made (None = the default group, already gloo)


def _group() -> Any:
    if not _HOST_GROUP:
        gloo = dist.get_backend() == "gloo"
        _HOST_GROUP.append(None if gloo else dist.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def any_rank(rt: Runtime, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (one small all-reduce on the host)."""
    return total(rt, int(flag)) > 0


def total(rt: Runtime, count: int) -> int:
    """``count`` summed over the ranks."""
    if not rt.distributed:
        return count
    t = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(t, group=_group())
    return int(t.item())


def first_message(rt: Runtime, message: str | None) -> str | None:
    """The first rank's non-None ``message`` (in rank order), on every rank."""
    if not rt.distributed:
        return message
    every: list[Any] = [None] * rt.world_size
    dist.all_gather_object(every, message, group=_group())
    return next((m for m in every if m is not None), None)


def from_rank0(rt: Runtime, value: Any) -> Any:
    """Rank 0's ``value`` (picklable), on every rank."""
    if not rt.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_group())
    return box[0]


def same_start(rt: Runtime, position: tuple[int, int, int], path: object) -> None:
    """Every rank read its own copy of the checkpoint ``path``; make sure all read the same
    (epoch, step, global step): a process outside the group writing it could make them differ.

    Raises:
        UserError: on every rank, if they differ.
    """
    first = from_rank0(rt, position)
    if any_rank(rt, position != first):
        raise UserError(
            f"the processes of this run resumed from different states of {path} (rank 0 at "
            f"epoch {first[0]} step {first[1]}): another process is writing it; stop it first"
        )


def forget() -> None:
    """Drop the host group (after the process group is destroyed, before a new one)."""
    _HOST_GROUP.clear()
