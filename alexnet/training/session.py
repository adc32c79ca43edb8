"""One training run's pieces: its run folder, data, model, optimiser, schedule and position.

``loop.run`` builds a ``Session`` with ``build_session`` and runs the epochs; this module knows
how the pieces are made, restored from a checkpoint and saved again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet import atomic
from alexnet import runtime as runtime_lib
from alexnet.config import Config, config_from_dict, dump_yaml, to_dict
from alexnet.data.loaders import EvalLoader, TrainLoader
from alexnet.data.packed import PackedSplit, Stats, load_stats
from alexnet.errors import UserError
from alexnet.inference.weights import Weights
from alexnet.log import RunLog, environment, info
from alexnet.model import build_model
from alexnet.training import agree, finetune, lock
from alexnet.training import checkpoint as ckpt
from alexnet.training.engine import NonFiniteWeights
from alexnet.training.optim import LRSchedule, build_optimizer


@dataclass
class Position:
    """Where training stands: the next step to run and the best validation error so far.

    ``best`` is the one record of the lowest validation top-1 error: ``best.pt`` is saved when
    it falls, the schedule is told it (``LRSchedule.observe``), the last line reports it.
    """

    epoch: int = 0
    step: int = 0  # steps of ``epoch`` already done
    global_step: int = 0  # steps done since the run began (TensorBoard's x axis)
    best: float = math.inf
    stop_signal: int = 0  # the signal that asked us to stop, if any
    history: list[dict[str, float]] = field(default_factory=list)

    def move_to(self, step: int) -> None:
        """``step`` steps of the current epoch are done (the global count follows)."""
        self.global_step += step - self.step
        self.step = step

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0


@dataclass
class Data:
    """The run's data: loaders, the training-set statistics and the class names."""

    train: TrainLoader
    val: EvalLoader
    stats: Stats
    classes: list[str]


@dataclass
class Session:
    """The pieces one training run wires together (built once by ``loop.run``)."""

    cfg: Config
    rt: runtime_lib.Runtime
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    data: Data
    log: RunLog
    pos: Position
    progress: bool = True
    # checkpoint name -> (epoch, step, global step) of its last save (or of the resumed state)
    saved: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def save(self, name: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """A checkpoint of everything needed to resume, as ``run.dir/name`` (rank 0 writes;
        every rank learns how it went).

        Raises:
            NonFiniteWeights: the weights hold NaN or infinity; nothing was written.
            UserError: the file, or earlier the run's records (``RunLog.problem``), could not be
                written (a full disk); the previous checkpoint is intact.
        """
        rngs = _gather_rng(self.rt)
        problem = None
        if self.rt.is_main and self.log.problem is not None:
            problem = ("write", self.log.problem)  # a checkpoint past records that were lost
        elif self.rt.is_main:
            if weights is None:
                weights = runtime_lib.canonical_state_dict(self.module)
            problem = self._write(name, weights, rngs)
        problem = agree.from_rank0(self.rt, problem)
        pos = self.pos
        if problem is None:
            self.saved[name] = (pos.epoch, pos.step, pos.global_step)
        elif problem[0] == "weights":
            raise NonFiniteWeights(
                pos.global_step, problem[1], self.optimizer.param_groups[0]["lr"]
            )
        else:
            previous = self.last_good(name)
            kept = f"the previous {previous} is intact" if previous else f"no {name} yet"
            raise UserError(
                f"{problem[1]}; {kept}; the run stopped: free some space, then continue it "
                "with --resume auto"
            )

    def last_good(self, name: str = ckpt.LAST) -> str | None:
        """The checkpoint ``name`` this run last wrote (or resumed from), with its position, in
        words; None if there is none."""
        if name not in self.saved:
            return None
        epoch, step, global_step = self.saved[name]
        return f"{self.cfg.run.dir / name} (epoch {epoch}, step {step}, global step {global_step})"

    def _write(
        self, name: str, weights: dict[str, torch.Tensor], rngs: list[dict[str, Any]]
    ) -> tuple[str, Any] | None:
        """Write the checkpoint; returns what went wrong, if anything (rank 0)."""
        bad = [k for k, v in weights.items() if not _finite(v)]
        if bad:
            return ("weights", bad)
        path = self.cfg.run.dir / name
        try:
            ckpt.save_checkpoint(path, self._payload(weights, rngs))
        except OSError as err:  # atomic: the previous file is still there, untouched
            return ("write", f"could not write {path}: {err.strerror or err}")
        return None

    def _payload(
        self, weights: dict[str, torch.Tensor], rngs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        pos, cfg = self.pos, self.cfg
        return {
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
            "class_names": self.data.val.split.class_names,  # in words, for figures
        }


def prepare_run_dir(cfg: Config, rt: runtime_lib.Runtime) -> None:
    """Create the run folder and take its lock (rank 0), write the resolved config and
    environment, clear killed saves."""
    with runtime_lib.main_process_first(rt):
        if rt.is_main:
            run_dir = cfg.run.dir
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.hold(run_dir)  # before anything in it is touched
            for stale in atomic.remove_temp_files(run_dir):
                info(f"removed {stale.name}, left by an interrupted save")
            atomic.write_text(run_dir / "config.yaml", dump_yaml(cfg))
            atomic.write_json(run_dir / "env.json", environment(rt.devices, rt.world_size))


def build_data(cfg: Config, rt: runtime_lib.Runtime) -> Data:
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
    stats, at = load_stats(cfg.data.root), rt.placement
    train = TrainLoader(train_split, stats, cfg.data, cfg.augment, cfg.train, cfg.model, at)
    val_views, val_batch = cfg.train.val_views, cfg.eval.batch_size
    val = EvalLoader(val_split, stats, cfg.data, cfg.model, val_views, val_batch, at)
    return Data(train, val, stats, train_split.classes)


def build_session(
    cfg: Config,
    rt: runtime_lib.Runtime,
    data: Data,
    state: dict[str, Any] | None,
    progress: bool,
    source: Weights | None = None,
) -> Session:
    """Model, optimiser, schedule and position: new (from ``source``'s weights when
    fine-tuning), or restored from ``state``."""
    model = build_model(cfg.model)
    if state is not None:
        model.load_state_dict(state["model"])
    finetune.prepare_model(model, cfg, source, rt.is_main)  # weights, frozen layers
    module = rt.wrap(model)
    optimizer = build_optimizer(runtime_lib.unwrap(module), cfg.optim, cfg.finetune.lr_mult)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr)
    pos = Position()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        pos = Position(state["epoch"], state["step"], state["global_step"], state["best"])
        pos.history = list(state.get("history", []))
        ckpt.set_rng_state(state["rng"][rt.rank])
    log = RunLog(cfg.run.dir, enabled=rt.is_main, tensorboard=cfg.run.tensorboard)
    s = Session(cfg, rt, module, optimizer, schedule, data, log, pos, progress)
    if state is not None:
        s.saved[ckpt.LAST] = (pos.epoch, pos.step, pos.global_step)
    return s


def resume_path(arg: str | Path | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``arg`` itself, ``run_dir/last.pt`` for "auto" (None
    if there is none yet), or None for a new run, which must not overwrite an old one."""
    if arg is None:
        if (run_dir / ckpt.LAST).exists():
            raise UserError(
                f"{run_dir} already holds a run (last.pt): continue it with "
                "--resume auto, or choose another --set run.dir=..."
            )
        return None
    if str(arg) == "auto":
        return ckpt.find_resume_checkpoint(run_dir)
    return Path(arg)


def check_resumable(cfg: Config, state: dict[str, Any], path: Path) -> None:
    stored = config_from_dict(state["config"], str(path))
    if stored.model != cfg.model:
        raise UserError(
            f"{path} was trained with a different model section; resume with its "
            f"config ({cfg.run.dir / 'config.yaml'}) or start a new run.dir"
        )
    if (stored.finetune.freeze, stored.finetune.lr_mult) != (
        cfg.finetune.freeze,
        cfg.finetune.lr_mult,
    ):
        raise UserError(
            f"{path} was trained with other finetune.freeze or finetune.lr_mult settings (its "
            "optimiser state is grouped by them); resume with the run's config.yaml"
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


def _finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t``: min and max propagate NaN, and take one pass without a
    temporary (10 ms for AlexNet's 61 M weights on a 2-core CPU, isfinite().all() 360 ms)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    low, high = torch.aminmax(t.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


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
