"""The training run: ``run(cfg)`` trains with the paper's recipe from start to end.

config -> runtime -> a ``Session`` (data, model, optimiser, schedule, position) -> epochs of
``engine.train_one_epoch`` and ``engine.evaluate``, a checkpoint after every epoch (and every
``train.checkpoint_every`` steps), so that a run stopped anywhere resumes bit-identically.
The command line is ``python -m alexnet.train``; fine-tuning, the ablation script and the tests
call ``run`` with a ``Config`` they already hold.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from alexnet import runtime as runtime_lib
from alexnet.config import Config
from alexnet.data.records import CorruptRecord
from alexnet.errors import UserError
from alexnet.log import info
from alexnet.training import agree, board, finetune, lock, session
from alexnet.training import checkpoint as ckpt
from alexnet.training.engine import (
    EpochResult,
    EpochSpan,
    Hooks,
    NonFiniteLoss,
    evaluate,
    train_one_epoch,
)
from alexnet.training.optim import set_lr
from alexnet.training.session import Position, Session


def run(cfg: Config, resume: str | Path | None = None, progress: bool = True) -> int:
    """Train ``cfg``'s run to its end; returns the exit code (0, or 128 + a stop signal).

    Args:
        resume: a checkpoint to continue from, or ``"auto"`` for ``run.dir/last.pt`` if it
            exists; None starts a new run (refused where ``run.dir`` already holds one).
        progress: show progress bars.

    Raises:
        UserError: bad data, a run folder in the way, a checkpoint that does not fit the
            config, a non-finite loss (with the last good checkpoint named).
    """
    try:
        return _run(cfg, resume, progress)
    finally:
        lock.release()
        runtime_lib.teardown()
        agree.forget()


def _run(cfg: Config, resume: str | Path | None, progress: bool) -> int:
    path = session.resume_path(resume, cfg.run.dir)
    state = ckpt.load_checkpoint(path) if path else None
    if state is not None:
        session.check_resumable(cfg, state, path)
    rt = runtime_lib.setup(cfg.parallel, cfg.runtime)
    # A new run's source weights are read before any folder is made: a bad name leaves nothing.
    source = finetune.load_source(cfg, rt) if state is None else None
    torch.manual_seed(cfg.train.seed + rt.rank)
    session.prepare_run_dir(cfg, rt)
    data = session.build_data(cfg, rt)
    s = session.build_session(cfg, rt, data, state, progress, source)
    if state is not None:
        agree.same_start(rt, (s.pos.epoch, s.pos.step, s.pos.global_step), path)
        info(f"resumed from {path}: epoch {s.pos.epoch}, step {s.pos.step}", rt.is_main)
    _announce(s)
    _check_restarts(rt.is_main)
    hooks = Hooks(
        log=lambda step, values: s.log.scalars("train", step, values),
        checkpoint=lambda done: _checkpoint_mid_epoch(s, done),
        should_stop=lambda: bool(s.pos.stop_signal),
    )
    try:
        with _stop_on_signals(s.pos, rt.is_main):
            return _epochs(s, hooks)
    except NonFiniteLoss as err:
        good = s.last_good()
        good = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
        raise UserError(
            f"{err}; stopped: {good} (try a lower optim.lr or runtime.dtype=float32)"
        ) from None
    except CorruptRecord as err:
        raise UserError(
            f"{err}; stopped (data.on_corrupt=stop): {s.last_good()} holds every step done; "
            f"find every bad record with `python -m alexnet.prepare --check {cfg.data.root}`, "
            "or go on without them: --resume auto --set data.on_corrupt=skip"
        ) from None
    finally:
        s.log.close()


def _announce(s: Session) -> None:
    cfg, rt, o = s.cfg, s.rt, s.cfg.optim
    per_process = cfg.train.batch_size // rt.world_size
    info(
        f"run folder {cfg.run.dir}; {rt.mode} on {', '.join(map(str, rt.devices))}; "
        f"{rt.world_size} process(es) x {per_process} images = batch {cfg.train.batch_size}; "
        f"lr {s.schedule.lr(s.pos.epoch):g} (momentum {o.momentum}, weight decay "
        f"{o.weight_decay}, {o.momentum_semantics} rule); {s.data.train.steps} steps/epoch, "
        f"{len(s.data.train.split)} train / {len(s.data.val.split)} val images",
        rt.is_main,
    )


def _check_restarts(is_main: bool) -> None:
    """torchrun --max-restarts in torch 2.14 keeps one store for every attempt unless told
    otherwise, and a restarted group can then read the dead group's addresses and fail to
    connect (pytorch/pytorch#135712; two restarts in three on this project's CPU test)."""
    env = os.environ
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if restarts and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        info(
            f"warning: torchrun will restart this group up to {restarts} times, but shares its "
            "store across restarts, which can make a restart fail to connect "
            "(pytorch/pytorch#135712): launch it with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
            is_main,
        )


def _checkpoint_mid_epoch(s: Session, done: int) -> None:
    s.pos.move_to(done)
    s.save(ckpt.LAST)


@contextlib.contextmanager
def _stop_on_signals(pos: Position, is_main: bool) -> Iterator[None]:
    """SIGINT/SIGTERM ask for a checkpoint and a clean stop at the next step; a second one
    stops at once, without saving (the last checkpoint stays as it was)."""

    def on_signal(signum: int, _frame: Any) -> None:
        if pos.stop_signal:
            raise KeyboardInterrupt
        pos.stop_signal = signum
        info(
            f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the next step",
            is_main,
        )

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _epochs(s: Session, hooks: Hooks) -> int:
    """Epochs from ``s.pos`` to the end (or a stop event, or a signal); returns the exit code."""
    cfg, rt, pos = s.cfg, s.rt, s.pos
    stall = _StallWatch(cfg.model.num_classes, cfg.train.stall_steps)
    for epoch in range(pos.epoch, cfg.train.epochs):
        lr = s.schedule.lr(epoch)
        set_lr(s.optimizer, lr, s.schedule.bias_lr(epoch))
        result, timing = _train_epoch(s, epoch, hooks)
        if pos.stop_signal:
            s.save(ckpt.LAST)
            info(f"stopped at epoch {epoch} step {pos.step}; resume with --resume auto", rt.is_main)
            return 128 + pos.stop_signal
        stall.check(pos.global_step, result.loss, rt.is_main)
        timing["replaced"] = agree.total(rt, int(timing["replaced"]))
        val = _validate(s)
        event = s.schedule.observe(val["top1_err"], pos.best)
        _record_epoch(s, epoch, _epoch_row(lr, result, val, timing, rt.world_size), event)
        if event == "stop":
            info(
                f"validation error stopped improving after {cfg.schedule.max_drops} "
                "learning-rate cuts: training ends (paper §5)",
                rt.is_main,
            )
            break
    info(
        f"done: best val top-1 error {100 * pos.best:.2f}%; evaluate with "
        f"`python -m alexnet.eval --checkpoint {cfg.run.dir / ckpt.BEST}`",
        rt.is_main,
    )
    return 0


def _validate(s: Session) -> dict[str, float]:
    """The epoch's validation; a corrupt record that stops it first saves the epoch's steps."""
    try:
        return evaluate(
            runtime_lib.unwrap(s.module),
            s.data.val,
            s.rt,
            expected=len(s.data.val.split),
            show_progress=s.progress,
        )
    except CorruptRecord:
        s.save(ckpt.LAST)  # a resume runs no step of this epoch, only its validation
        raise


def _train_epoch(s: Session, epoch: int, hooks: Hooks) -> tuple[EpochResult, dict[str, float]]:
    """One (maybe resumed) epoch of training; moves ``s.pos`` to where it stopped. Returns the
    result and the loader's timing (images, data-wait and elapsed seconds)."""
    pos, train = s.pos, s.data.train
    span = EpochSpan(
        epoch,
        pos.step,
        train.steps,
        pos.global_step,
        s.cfg.train.log_every,
        s.cfg.train.checkpoint_every,
    )
    train.pop_timing()  # the time since the last epoch was validation and saving, not waiting
    batches = train.epoch(epoch, pos.step)
    try:
        result = train_one_epoch(s.module, batches, s.optimizer, s.rt, span, hooks, s.progress)
    except CorruptRecord as err:  # in the batch after ``steps_done``: save the steps before it
        pos.move_to(err.steps_done if err.steps_done is not None else pos.step)
        s.save(ckpt.LAST)
        raise
    pos.move_to(result.steps_done)
    return result, train.pop_timing()


def _epoch_row(
    lr: float, result: EpochResult, val: dict[str, float], timing: dict[str, float], world: int
) -> dict[str, float]:
    """The epoch's line of ``metrics.jsonl`` (and its TensorBoard scalars)."""
    return {
        "lr": lr,
        "train_loss": result.loss,
        "train_top1_err": result.top1_err,
        "train_top5_err": result.top5_err,
        "val_loss": val["loss"],
        "val_top1_err": val["top1_err"],
        "val_top5_err": val["top5_err"],
        "val_images": val["n"],
        "val_unscored": val["unscored"],  # corrupt records left out (data.on_corrupt=skip)
        "train_replaced": timing["replaced"],  # corrupt records replaced, all processes
        # every rank trains on as many images, so this process's count times the world
        "images_per_s": result.images * world / max(result.seconds, 1e-9),
        "data_wait_fraction": timing["wait_s"] / max(timing["elapsed_s"], 1e-9),
    }


def _record_epoch(s: Session, epoch: int, row: dict[str, float], event: str) -> None:
    """Log the epoch, then save ``best.pt`` (if it improved) and ``last.pt``."""
    pos, rt = s.pos, s.rt
    s.log.scalars("epoch", pos.global_step, row, epoch=epoch, event=event)
    weights = runtime_lib.canonical_state_dict(s.module)  # once, for the image and the saves
    s.log.kernels(weights["conv1.weight"], pos.global_step)
    board.record_epoch(s, epoch, last=event == "stop" or epoch + 1 == s.cfg.train.epochs)
    pos.history.append({"epoch": epoch, **row})
    info(
        f"epoch {epoch}: train loss {row['train_loss']:.4f}, val top-1 "
        f"{100 * row['val_top1_err']:.2f}% top-5 {100 * row['val_top5_err']:.2f}% "
        f"({s.cfg.train.val_views} view), lr {row['lr']:g}, {row['images_per_s']:.0f} img/s, "
        f"data wait {100 * row['data_wait_fraction']:.0f}%"
        + (f", {row['train_replaced']:.0f} corrupt records replaced" * bool(row["train_replaced"]))
        + (f", {row['val_unscored']:.0f} images not scored" * bool(row["val_unscored"]))
        + (f" [{event}]" if event in ("drop", "stop") else ""),
        rt.is_main,
    )
    pos.next_epoch()
    if row["val_top1_err"] < pos.best:
        pos.best = row["val_top1_err"]
        s.save(ckpt.BEST, weights)
    s.save(ckpt.LAST, weights)


class _StallWatch:
    """Warns once when the loss is still about ln(classes) after ``after`` steps: the net has
    learnt only the class prior, the known failure of the paper's init (faithful-spec 3.2)."""

    def __init__(self, classes: int, after: int) -> None:
        self.classes, self.after = classes, after
        self.warned = False

    def check(self, global_step: int, loss: float, is_main: bool) -> None:
        limit = math.log(self.classes)
        if self.warned or global_step < self.after or not abs(loss - limit) < 0.05:  # NaN: no
            return
        self.warned = True
        info(
            f"warning: after {global_step} steps the loss {loss:.3f} is still about "
            f"ln({self.classes}) = {limit:.3f}: the net has learnt only the class prior (a "
            "known problem of the paper's init, faithful-spec 3.2)",
            is_main,
        )
