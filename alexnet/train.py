"""Train AlexNet with the paper's recipe: ``python -m alexnet.train --config CONFIG.yaml``.

``main`` only wires the pieces together: config -> runtime -> a ``session.Session`` (data,
model, optimiser, schedule, position) -> epochs of ``engine.train_one_epoch`` +
``engine.evaluate``, with checkpoints that resume bit-identically (``--resume auto``) and a run
folder holding everything a result needs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from alexnet import checkpoint as ckpt
from alexnet import finetune, session
from alexnet import runtime as runtime_lib
from alexnet.config import Config, load_config
from alexnet.engine import EpochPlan, Hooks, NonFiniteLoss, evaluate, train_one_epoch
from alexnet.errors import UserError, report_user_errors
from alexnet.figures import board
from alexnet.log import info
from alexnet.optim import set_lr
from alexnet.session import Position, Session

EPILOG = """examples:
  python -m alexnet.train --config configs/ilsvrc2012.yaml
  python -m alexnet.train --config configs/demo.yaml --set train.epochs=2 --set optim.lr=0.005
  python -m alexnet.train --config configs/ilsvrc2012.yaml --resume auto
  python -m alexnet.train --config configs/ilsvrc2012.yaml --set parallel.mode=two_device
  torchrun --nproc_per_node=8 -m alexnet.train --config configs/ilsvrc2012.yaml \\
      --set parallel.mode=ddp
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.train",
        description="Train the 2012 AlexNet. Defaults are the paper's; see configs/ and README.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML config (default: the paper's recipe)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.005 (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue from a checkpoint, or 'auto' for run.dir/last.pt if present",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return report_user_errors(lambda: _train(args))
    finally:
        runtime_lib.teardown()


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    resume = session.resume_path(args.resume, cfg.run.dir)
    state = ckpt.load_checkpoint(resume) if resume else None
    if state is not None:
        session.check_resumable(cfg, state, resume)
    rt = runtime_lib.setup(cfg.parallel, cfg.runtime)
    source = finetune.load_source(cfg, rt) if state is None else None  # before any folder
    torch.manual_seed(cfg.train.seed + rt.rank)
    session.prepare_run_dir(cfg, rt)
    data = session.build_data(cfg, rt)
    s = session.build_session(cfg, rt, data, state, not args.no_progress, source)
    if state is not None:
        info(f"resumed from {resume}: epoch {s.pos.epoch}, step {s.pos.step}", rt.is_main)
    _announce(s)
    hooks = Hooks(
        log=lambda step, values: s.log.scalars("train", step, values),
        checkpoint=lambda done: _checkpoint_mid_epoch(s, done),
        should_stop=lambda: bool(s.pos.stop_signal),
    )
    try:
        with _stop_on_signals(s.pos, rt.is_main):
            return _epochs(s, hooks)
    except NonFiniteLoss as err:
        raise UserError(
            f"{err}; stopped. The last good checkpoint is {cfg.run.dir / 'last.pt'} "
            "(try a lower optim.lr or runtime.dtype=float32)"
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
        f"{o.weight_decay}, {o.momentum_semantics} rule); {s.data.train.steps()} steps/epoch, "
        f"{len(s.data.train.split)} train / {len(s.data.val.split)} val images",
        rt.is_main,
    )


def _checkpoint_mid_epoch(s: Session, step_in_epoch: int) -> None:
    s.pos.global_step += step_in_epoch - s.pos.step
    s.pos.step = step_in_epoch
    s.save(ckpt.LAST)


@contextlib.contextmanager
def _stop_on_signals(pos: Position, is_main: bool) -> Iterator[None]:
    """SIGINT/SIGTERM ask for a checkpoint and a clean stop at the next step; a second one
    stops at once, without saving."""

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
    stall = _StallWatch(cfg)
    for epoch in range(pos.epoch, cfg.train.epochs):
        lr = s.schedule.lr(epoch)
        set_lr(s.optimizer, lr, s.schedule.bias_lr(epoch))
        result, timing = _train_epoch(s, epoch, hooks)
        if pos.stop_signal:
            s.save(ckpt.LAST)
            info(f"stopped at epoch {epoch} step {pos.step}; resume with --resume auto", rt.is_main)
            return 128 + pos.stop_signal
        stall.check(pos.global_step, result["loss"], rt.is_main)
        val = evaluate(
            runtime_lib.unwrap(s.module),
            s.data.val,
            rt,
            expected=len(s.data.val.split),
            show_progress=s.progress,
        )
        event = s.schedule.observe(epoch, val["top1_err"])
        row = _epoch_row(lr, result, val, timing, rt.world_size)
        _record_epoch(s, epoch, row, event)
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


def _train_epoch(s: Session, epoch: int, hooks: Hooks) -> tuple[dict[str, float], dict]:
    """One (maybe resumed) epoch of training; advances ``s.pos`` to where it stopped."""
    pos, train = s.pos, s.data.train
    plan = EpochPlan(
        epoch,
        pos.step,
        train.steps(),
        pos.global_step,
        s.cfg.train.log_every,
        s.cfg.train.checkpoint_every,
    )
    train.pop_timing()
    result = train_one_epoch(
        s.module, train.epoch(epoch, pos.step), s.optimizer, s.rt, plan, hooks, s.progress
    )
    pos.global_step = plan.first_global_step + int(result["steps_done"]) - plan.start_step
    pos.step = int(result["steps_done"])
    return result, train.pop_timing()


def _epoch_row(lr: float, result: dict, val: dict, timing: dict, world: int) -> dict[str, float]:
    return {
        "lr": lr,
        "train_loss": result["loss"],
        "train_top1_err": result["top1_err"],
        "train_top5_err": result["top5_err"],
        "val_loss": val["loss"],
        "val_top1_err": val["top1_err"],
        "val_top5_err": val["top5_err"],
        "val_images": val["n"],
        "images_per_s": result["images"] * world / max(result["seconds"], 1e-9),
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
        + (f" [{event}]" if event in ("drop", "stop") else ""),
        rt.is_main,
    )
    pos.epoch, pos.step = epoch + 1, 0
    if row["val_top1_err"] < pos.best:
        pos.best = row["val_top1_err"]
        s.save(ckpt.BEST, weights)
    s.save(ckpt.LAST, weights)


class _StallWatch:
    """Warns once when the loss is still about ln(classes) after ``train.stall_steps`` steps."""

    def __init__(self, cfg: Config) -> None:
        self.classes, self.after = cfg.model.num_classes, cfg.train.stall_steps
        self.warned = False

    def check(self, global_step: int, loss: float, is_main: bool) -> None:
        limit = math.log(self.classes)
        if self.warned or global_step < self.after or abs(loss - limit) >= 0.05:
            return
        self.warned = True
        info(
            f"warning: after {global_step} steps the loss {loss:.3f} is still about "
            f"ln({self.classes}) = {limit:.3f}: the net has learnt only the class prior (a "
            "known problem of the paper's init, faithful-spec 3.2)",
            is_main,
        )


if __name__ == "__main__":
    sys.exit(main())
