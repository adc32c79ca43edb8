"""Train AlexNet with the paper's recipe: ``python -m alexnet.train --config CONFIG.yaml``.

``main`` only wires the pieces together: config -> runtime -> data -> model -> optimiser and
schedule -> epochs of ``engine.train_one_epoch`` + ``engine.evaluate``, with checkpoints that
resume bit-identically (``--resume auto``) and a run folder holding everything a result needs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet import atomic
from alexnet import checkpoint as ckpt
from alexnet import runtime as runtime_lib
from alexnet.config import Config, config_from_dict, dump_yaml, input_size, load_config, to_dict
from alexnet.data.loaders import EvalLoader, TrainLoader
from alexnet.data.packed import PackedSplit, Stats, load_stats
from alexnet.engine import EpochPlan, Hooks, NonFiniteLoss, evaluate, train_one_epoch
from alexnet.errors import UserError, report_user_errors
from alexnet.log import RunLog, environment, info
from alexnet.model import build_model
from alexnet.optim import LRSchedule, build_optimizer, set_lr

EPILOG = """examples:
  python -m alexnet.train --config configs/ilsvrc2012.yaml
  python -m alexnet.train --config configs/demo.yaml --set train.epochs=2 --set optim.lr=0.005
  python -m alexnet.train --config configs/ilsvrc2012.yaml --resume auto
  python -m alexnet.train --config configs/ilsvrc2012.yaml --set parallel.mode=two_device
  torchrun --nproc_per_node=8 -m alexnet.train --config configs/ilsvrc2012.yaml \\
      --set parallel.mode=ddp
"""


@dataclass
class Position:
    """Where training stands: the next step to run and the best validation error so far."""

    epoch: int = 0
    step: int = 0  # steps of ``epoch`` already done
    global_step: int = 0
    best: float = math.inf
    stop_signal: int = 0  # the signal that asked us to stop, if any
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Data:
    """The run's data: loaders, the training-set statistics and the class names."""

    train: TrainLoader
    val: EvalLoader
    stats: Stats
    classes: list[str]


@dataclass
class Session:
    """The pieces one training run wires together (built once by ``_train``)."""

    cfg: Config
    rt: runtime_lib.Runtime
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    data: Data
    log: RunLog
    pos: Position
    progress: bool = True

    def save(self, name: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """A checkpoint of everything needed to resume, as ``run.dir/name`` (rank 0 writes)."""
        rngs = _gather_rng(self.rt)
        if not self.rt.is_main:
            return
        if weights is None:
            weights = runtime_lib.canonical_state_dict(self.module)
        pos, cfg = self.pos, self.cfg
        ckpt.save_checkpoint(
            cfg.run.dir / name,
            {
                "config": to_dict(cfg),
                "model": weights,
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "epoch": pos.epoch,
                "step": pos.step,
                "global_step": pos.global_step,
                "best": pos.best,
                "rng": rngs,
                "history": pos.history,
                "parallel_mode": self.rt.mode,
                "layout": _layout(cfg),
                "world_size": self.rt.world_size,
                "data_stats": _stats_payload(self.data.stats),
                "classes": self.data.classes,
            },
        )


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
    resume = _resume_path(args.resume, cfg.run.dir)
    state = ckpt.load_checkpoint(resume) if resume else None
    if state is not None:
        _check_resumable(cfg, state, resume)
    rt = runtime_lib.setup(cfg.parallel, cfg.runtime)
    torch.manual_seed(cfg.train.seed + rt.rank)
    _prepare_run_dir(cfg, rt)
    data = _build_data(cfg, rt)
    s = _build_session(cfg, rt, data, state, progress=not args.no_progress)
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


def _prepare_run_dir(cfg: Config, rt: runtime_lib.Runtime) -> None:
    """Create the run folder, write the resolved config and environment, clear killed saves."""
    with runtime_lib.main_process_first(rt):
        if rt.is_main:
            run_dir = cfg.run.dir
            run_dir.mkdir(parents=True, exist_ok=True)
            for stale in atomic.remove_temp_files(run_dir):
                info(f"removed {stale.name}, left by an interrupted save")
            atomic.write_text(run_dir / "config.yaml", dump_yaml(cfg))
            atomic.write_json(run_dir / "env.json", environment(rt.devices, rt.world_size))


def _build_data(cfg: Config, rt: runtime_lib.Runtime) -> Data:
    """The training and validation loaders for this process, checked against the model."""
    train_split = PackedSplit(cfg.data.root, cfg.data.train_split)
    val_split = PackedSplit(cfg.data.root, cfg.data.val_split)
    if len(train_split.classes) != cfg.model.num_classes:
        raise UserError(
            f"{cfg.data.root} has {len(train_split.classes)} classes but model.num_classes is "
            f"{cfg.model.num_classes}; set --set model.num_classes={len(train_split.classes)}"
        )
    if cfg.train.batch_size % rt.world_size:
        raise UserError(
            f"train.batch_size {cfg.train.batch_size} does not divide over "
            f"{rt.world_size} processes"
        )
    stats, size = load_stats(cfg.data.root), input_size(cfg.model)
    where = dict(device=rt.device, rank=rt.rank, world_size=rt.world_size)
    train = TrainLoader(
        train_split,
        stats,
        data=cfg.data,
        augment=cfg.augment,
        input_size=size,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        steps_per_epoch=cfg.train.steps_per_epoch,
        **where,
    )
    val = EvalLoader(
        val_split,
        stats,
        data=cfg.data,
        input_size=size,
        batch_size=cfg.eval.batch_size,
        views=cfg.train.val_views,
        **where,
    )
    return Data(train, val, stats, train_split.classes)


def _build_session(
    cfg: Config, rt: runtime_lib.Runtime, data: Data, state: dict[str, Any] | None, progress: bool
) -> Session:
    """Model, optimiser, schedule and position: new, or restored from ``state``."""
    model = build_model(cfg.model)
    if state is not None:
        model.load_state_dict(state["model"])
    module = rt.wrap(model)
    optimizer = build_optimizer(runtime_lib.unwrap(module), cfg.optim)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr)
    pos = Position()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        pos = Position(
            state["epoch"],
            state["step"],
            state["global_step"],
            state["best"],
            history=list(state.get("history", [])),
        )
        ckpt.set_rng_state(state["rng"][rt.rank])
    log = RunLog(cfg.run.dir, enabled=rt.is_main, tensorboard=cfg.run.tensorboard)
    return Session(cfg, rt, module, optimizer, schedule, data, log, pos, progress)


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
        set_lr(s.optimizer, lr)
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


def _resume_path(arg: str | None, run_dir: Path) -> Path | None:
    if arg is None:
        if (run_dir / ckpt.LAST).exists():
            raise UserError(
                f"{run_dir} already holds a run (last.pt): continue it with "
                "--resume auto, or choose another --set run.dir=..."
            )
        return None
    if arg == "auto":
        return ckpt.find_resume_checkpoint(run_dir)
    return Path(arg)


def _check_resumable(cfg: Config, state: dict[str, Any], path: Path) -> None:
    stored = config_from_dict(state["config"], str(path))
    if stored.model != cfg.model:
        raise UserError(
            f"{path} was trained with a different model section; resume with its "
            f"config ({cfg.run.dir / 'config.yaml'}) or start a new run.dir"
        )
    if state["layout"] != _layout(cfg):
        raise UserError(
            f"{path} was written by the {state['layout']} form of the model; resume "
            "with the same parallel settings (its optimiser state is laid out for it)"
        )
    changed = [k for k, v in to_dict(cfg).items() if v != state["config"].get(k)]
    if changed:
        info(f"warning: resuming with changed config sections: {', '.join(changed)}")


def _layout(cfg: Config) -> str:
    """Which form's parameters the optimiser state belongs to."""
    p = cfg.parallel
    return "two_device" if p.mode == "two_device" or p.two_device_per_process else "single"


def _gather_rng(rt: runtime_lib.Runtime) -> list[dict[str, Any]]:
    mine = ckpt.rng_state()
    if not rt.distributed:
        return [mine]
    out: list[Any] = [None] * rt.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


def _stats_payload(stats: Stats) -> dict[str, torch.Tensor]:
    keys = ("mean", "cov", "eigval", "eigvec")
    return {k: torch.from_numpy(getattr(stats, k)).float() for k in keys}


if __name__ == "__main__":
    sys.exit(main())
