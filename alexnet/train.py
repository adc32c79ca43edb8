"""Train AlexNet with the paper's recipe: ``python -m alexnet.train --config configs/ilsvrc2012.yaml``.

``main`` only wires the pieces together: config -> runtime -> data -> model -> optimiser and
schedule -> epochs of ``engine.train_one_epoch`` + ``engine.evaluate``, with checkpoints that
resume bit-identically (``--resume auto``) and a run folder holding everything a result needs.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from alexnet import checkpoint as ckpt
from alexnet.config import Config, config_from_dict, dump_yaml, input_size, load_config, to_dict
from alexnet.data import EvalLoader, TrainLoader
from alexnet.engine import EpochPlan, Hooks, NonFiniteLoss, evaluate, train_one_epoch
from alexnet.errors import UserError, report_user_errors
from alexnet.log import RunLog, environment, info
from alexnet.model import build_model
from alexnet.optim import LRSchedule, build_optimizer, set_lr
from alexnet.packed import PackedSplit, Stats, load_stats, write_json_atomic
from alexnet import runtime as runtime_lib

EPILOG = """examples:
  python -m alexnet.train --config configs/ilsvrc2012.yaml
  python -m alexnet.train --config configs/demo.yaml --set train.epochs=2 --set optim.lr=0.005
  python -m alexnet.train --config configs/ilsvrc2012.yaml --resume auto
  python -m alexnet.train --config configs/ilsvrc2012.yaml --set parallel.mode=two_device
  torchrun --nproc_per_node=8 -m alexnet.train --config configs/ilsvrc2012.yaml --set parallel.mode=ddp
"""


@dataclass
class Session:
    """The pieces one training run wires together (built once by ``_train``)."""

    cfg: Config
    rt: runtime_lib.Runtime
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    train_loader: TrainLoader
    val_loader: EvalLoader
    log: RunLog
    save: Callable[..., None]  # save(name, weights=None): a checkpoint in the run folder
    progress: bool = True


@dataclass
class Position:
    """Where training stands: the next step to run and the best validation error so far."""

    epoch: int = 0
    step: int = 0  # steps of ``epoch`` already done
    global_step: int = 0
    best: float = math.inf
    stop_signal: int = 0  # the signal that asked us to stop, if any
    history: list[dict[str, float]] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.train",
        description="Train the 2012 AlexNet. Defaults are the paper's; see configs/ and README.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML config (default: the paper's recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.005 (repeatable)")
    p.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a checkpoint, or 'auto' for run.dir/last.pt if present")
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
    run_dir = cfg.run.dir
    with runtime_lib.main_process_first(rt):
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
            write_json_atomic(run_dir / "env.json", environment(rt.devices, rt.world_size))

    train_split = PackedSplit(cfg.data.root, cfg.data.train_split)
    val_split = PackedSplit(cfg.data.root, cfg.data.val_split)
    if len(train_split.classes) != cfg.model.num_classes:
        raise UserError(
            f"{cfg.data.root} has {len(train_split.classes)} classes but model.num_classes is "
            f"{cfg.model.num_classes}; set --set model.num_classes={len(train_split.classes)}"
        )
    stats = load_stats(cfg.data.root)
    if cfg.train.batch_size % rt.world_size:
        raise UserError(f"train.batch_size {cfg.train.batch_size} does not divide over {rt.world_size} processes")
    per_process = cfg.train.batch_size // rt.world_size
    size = input_size(cfg.model)
    train_loader = TrainLoader(
        train_split, stats, cfg.data, cfg.augment, size, cfg.train.batch_size, rt.device, cfg.train.seed,
        rank=rt.rank, world_size=rt.world_size, steps_per_epoch=cfg.train.steps_per_epoch,
    )
    val_loader = EvalLoader(
        val_split, stats, cfg.data, size, cfg.eval.batch_size, rt.device, cfg.train.val_views,
        rank=rt.rank, world_size=rt.world_size,
    )

    model = build_model(cfg.model)
    pos = Position()
    if state is not None:
        model.load_state_dict(state["model"])
    module = rt.wrap(model)
    optimizer = build_optimizer(runtime_lib.unwrap(module), cfg.optim)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        pos = Position(state["epoch"], state["step"], state["global_step"], state["best"],
                       history=list(state.get("history", [])))
        ckpt.set_rng_state(state["rng"][rt.rank])
        info(f"resumed from {resume}: epoch {pos.epoch}, step {pos.step}", rt.is_main)

    log = RunLog(run_dir, enabled=rt.is_main, tensorboard=cfg.run.tensorboard)
    info(f"run folder {run_dir}; {rt.mode} on {', '.join(map(str, rt.devices))}; "
         f"{rt.world_size} process(es) x {per_process} images = batch {cfg.train.batch_size}; "
         f"lr {schedule.lr(pos.epoch):g} (momentum {cfg.optim.momentum}, weight decay "
         f"{cfg.optim.weight_decay}, {cfg.optim.momentum_semantics} rule); "
         f"{train_loader.steps()} steps/epoch, {len(train_split)} train / {len(val_split)} val images",
         rt.is_main)

    def save(name: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        rngs = _gather_rng(rt)
        if rt.is_main:
            if weights is None:
                weights = runtime_lib.canonical_state_dict(module)
            ckpt.save_checkpoint(run_dir / name, {
                "config": to_dict(cfg), "model": weights,
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "epoch": pos.epoch, "step": pos.step, "global_step": pos.global_step,
                "best": pos.best, "rng": rngs, "history": pos.history,
                "parallel_mode": rt.mode, "layout": _layout(cfg), "world_size": rt.world_size,
                "data_stats": _stats_payload(stats), "classes": train_split.classes,
            })

    def on_checkpoint(step_in_epoch: int) -> None:
        pos.global_step += step_in_epoch - pos.step
        pos.step = step_in_epoch
        save("last.pt")

    def on_signal(signum: int, _frame: Any) -> None:
        if pos.stop_signal:  # a second signal: stop now, without saving
            raise KeyboardInterrupt
        pos.stop_signal = signum
        info(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the next step", rt.is_main)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    hooks = Hooks(log=lambda step, values: log.scalars("train", step, values),
                  checkpoint=on_checkpoint, should_stop=lambda: bool(pos.stop_signal))
    try:
        session = Session(cfg, rt, module, optimizer, schedule, train_loader, val_loader, log, save,
                          not args.no_progress)
        return _epochs(session, pos, hooks)
    except NonFiniteLoss as err:
        raise UserError(f"{err}; stopped. The last good checkpoint is {run_dir / 'last.pt'} "
                        "(try a lower optim.lr or runtime.dtype=float32)") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.close()


def _epochs(s: Session, pos: Position, hooks: Hooks) -> int:
    """Epochs from ``pos`` to the end (or a stop event, or a signal); returns the exit code."""
    cfg, rt, train_loader, log = s.cfg, s.rt, s.train_loader, s.log
    stall_limit = math.log(cfg.model.num_classes)
    stall_warned = False
    for epoch in range(pos.epoch, cfg.train.epochs):
        lr = s.schedule.lr(epoch)
        set_lr(s.optimizer, lr)
        plan = EpochPlan(epoch, pos.step, train_loader.steps(), pos.global_step,
                         cfg.train.log_every, cfg.train.checkpoint_every)
        train_loader.pop_timing()
        result = train_one_epoch(s.module, train_loader.epoch(epoch, pos.step), s.optimizer, rt,
                                 plan, hooks, s.progress)
        timing = train_loader.pop_timing()
        pos.global_step = plan.first_global_step + int(result["steps_done"]) - plan.start_step
        pos.step = int(result["steps_done"])
        if pos.stop_signal:
            s.save("last.pt")
            info(f"stopped at epoch {epoch} step {pos.step}; resume with --resume auto", rt.is_main)
            return 128 + pos.stop_signal
        if (not stall_warned and pos.global_step >= cfg.train.stall_steps
                and abs(result["loss"] - stall_limit) < 0.05):
            stall_warned = True
            info(f"warning: after {pos.global_step} steps the loss {result['loss']:.3f} is still "
                 f"about ln({cfg.model.num_classes}) = {stall_limit:.3f}: the net has learnt only "
                 "the class prior (a known problem of the paper's init, faithful-spec 3.2)", rt.is_main)
        val = evaluate(runtime_lib.unwrap(s.module), s.val_loader, rt,
                       expected=len(s.val_loader.split), show_progress=s.progress)
        event = s.schedule.observe(epoch, val["top1_err"])
        row = {
            "lr": lr, "train_loss": result["loss"], "train_top1_err": result["top1_err"],
            "train_top5_err": result["top5_err"], "val_loss": val["loss"],
            "val_top1_err": val["top1_err"], "val_top5_err": val["top5_err"], "val_images": val["n"],
            "images_per_s": result["images"] * rt.world_size / max(result["seconds"], 1e-9),
            "data_wait_fraction": timing["wait_s"] / max(timing["elapsed_s"], 1e-9),
        }
        log.scalars("epoch", pos.global_step, row, epoch=epoch, event=event)
        weights = runtime_lib.canonical_state_dict(s.module)  # once, for the image and the saves
        log.kernels(weights["conv1.weight"], pos.global_step)
        pos.history.append({"epoch": epoch, **row})
        info(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val top-1 {100 * val['top1_err']:.2f}% "
             f"top-5 {100 * val['top5_err']:.2f}% ({cfg.train.val_views} view), lr {lr:g}, "
             f"{row['images_per_s']:.0f} img/s, data wait {100 * row['data_wait_fraction']:.0f}%"
             + (f" [{event}]" if event in ("drop", "stop") else ""), rt.is_main)
        pos.epoch, pos.step = epoch + 1, 0
        if val["top1_err"] < pos.best:
            pos.best = val["top1_err"]
            s.save("best.pt", weights)
        s.save("last.pt", weights)
        if event == "stop":
            info(f"validation error stopped improving after {cfg.schedule.max_drops} learning-rate "
                 "cuts: training ends (paper §5)", rt.is_main)
            break
    info(f"done: best val top-1 error {100 * pos.best:.2f}%; evaluate with "
         f"`python -m alexnet.eval --checkpoint {cfg.run.dir / 'best.pt'}`", rt.is_main)
    return 0


def _resume_path(arg: str | None, run_dir: Path) -> Path | None:
    if arg is None:
        if (run_dir / "last.pt").exists():
            raise UserError(f"{run_dir} already holds a run (last.pt): continue it with "
                            "--resume auto, or choose another --set run.dir=...")
        return None
    if arg == "auto":
        return ckpt.find_resume_checkpoint(run_dir)
    return Path(arg)


def _check_resumable(cfg: Config, state: dict[str, Any], path: Path) -> None:
    stored = config_from_dict(state["config"], str(path))
    if stored.model != cfg.model:
        raise UserError(f"{path} was trained with a different model section; resume with its "
                        f"config ({cfg.run.dir / 'config.yaml'}) or start a new run.dir")
    if state["layout"] != _layout(cfg):
        raise UserError(f"{path} was written by the {state['layout']} form of the model; resume "
                        "with the same parallel settings (its optimiser state is laid out for it)")
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
    return {k: torch.from_numpy(getattr(stats, k)).float() for k in ("mean", "cov", "eigval", "eigvec")}


if __name__ == "__main__":
    sys.exit(main())
