"""The paper's SGD (§5), its parameter groups, and the learning-rate schedules.

Paper §5: batch 128, momentum 0.9, weight decay 0.0005, and the update

    v <- 0.9 v - 0.0005 lr w - lr <dL/dw>,    w <- w + v.

The learning rate sits *inside* the velocity, so when lr is divided by 10 the velocity built
with the old rate decays geometrically (0.9^k) instead of shrinking at once. ``PaperSGD`` does
exactly that. ``torch.optim.SGD`` keeps ``buf = m buf + g + wd w`` and steps ``w -= lr buf``:
identical while lr is constant (v = -lr buf), different at every lr change (faithful-spec 4.1).

Schedules are pure functions (``plateau_step``, ``milestone_scale``) wrapped by a small stateful
``LRSchedule`` that the trainer checkpoints. Epochs are 0-based everywhere in this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from alexnet import paper
from alexnet.config import ALL_LAYERS, OptimConfig, ScheduleConfig
from alexnet.errors import UserError


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum in the paper's form: velocity in parameter units (§5).

    Per step and parameter: ``v = momentum * v - weight_decay * lr * w - lr * g``, then
    ``w = w + v``. The velocity starts at zero and is kept in ``state[p]["velocity"]``. Each
    param group has ``lr``, ``momentum`` and ``weight_decay``; extra keys (``lr_mult``, ``name``)
    are kept untouched. Defaults are the paper's momentum and weight decay.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = paper.MOMENTUM,
        weight_decay: float = paper.WEIGHT_DECAY,
    ) -> None:
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(
                f"PaperSGD needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0; "
                f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            # Group by (device, dtype) so every foreach call sees one kind of tensor.
            buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PaperSGD does not support sparse gradients")
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ps, gs, vs = buckets.setdefault((p.device, p.dtype), ([], [], []))
                ps.append(p)
                gs.append(p.grad)
                vs.append(state["velocity"])
            for ps, gs, vs in buckets.values():
                torch._foreach_mul_(vs, momentum)  # v = m v
                if decay != 0:
                    torch._foreach_add_(vs, ps, alpha=-decay * lr)  # - wd lr w
                torch._foreach_add_(vs, gs, alpha=-lr)  # - lr g
                torch._foreach_add_(ps, vs)  # w = w + v
        return loss


def layer_of(module_name: str) -> str:
    """The learned layer (``conv1`` ... ``fc8``) a parameter's top-level module belongs to;
    the two-device form's ``conv2a`` and ``conv2b`` are conv2's halves."""
    top = module_name.split(".")[0]
    return top[:-1] if top[-1:] in ("a", "b") and top[:-1] in ALL_LAYERS else top


def param_groups(
    model: nn.Module, cfg: OptimConfig, layer_lr_mult: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Split the trainable parameters into "weights" and "biases" groups.

    Rule: a parameter is a bias when the attribute holding it on its own module is named
    exactly ``bias`` (``conv1.bias``, ``fc8.bias``); every other parameter is a weight, whatever
    its shape. No substring matching. Shared parameters are counted once; parameters with
    ``requires_grad=False`` (frozen layers) are left out. Empty groups are dropped.

    Weights get ``lr_mult`` 1 and ``cfg.weight_decay`` (§5); biases get ``cfg.bias_lr_mult``
    and ``cfg.bias_weight_decay`` (None = ``cfg.weight_decay``). A layer named in
    ``layer_lr_mult`` (fine-tuning, e.g. ``{"fc8": 10}``) gets its own groups, "weights x10" and
    "biases x10", whose ``lr_mult`` is multiplied by its factor. Each group's ``lr`` is already
    ``cfg.lr * lr_mult``; ``kind`` says "weights" or "biases".
    """
    layer_lr_mult = layer_lr_mult or {}
    found: dict[tuple[int, float], list[nn.Parameter]] = {}  # (0 weights / 1 biases, mult)
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            mult = float(layer_lr_mult.get(layer_of(prefix), 1.0))
            found.setdefault((int(name == "bias"), mult), []).append(p)
    bias_decay = cfg.weight_decay if cfg.bias_weight_decay is None else cfg.bias_weight_decay
    groups = []
    for (is_bias, mult), params in sorted(found.items(), key=lambda item: item[0]):
        kind = "biases" if is_bias else "weights"
        groups.append(
            {
                "name": kind if mult == 1.0 else f"{kind} x{mult:g}",
                "kind": kind,
                "params": params,
                "lr_mult": mult * (cfg.bias_lr_mult if is_bias else 1.0),
                "weight_decay": bias_decay if is_bias else cfg.weight_decay,
            }
        )
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    return groups


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, layer_lr_mult: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    """``PaperSGD`` for ``momentum_semantics="paper"``, ``torch.optim.SGD`` for "pytorch";
    ``layer_lr_mult`` as in ``param_groups``."""
    groups = param_groups(model, cfg, layer_lr_mult)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.momentum_semantics == "paper":
        return PaperSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, bias_lr: float | None = None) -> None:
    """Set every group's lr to ``lr * group["lr_mult"]`` (a group without ``lr_mult``: 1);
    with ``bias_lr`` (a schedule of their own), bias groups get ``bias_lr * lr_mult``."""
    for group in optimizer.param_groups:
        base = bias_lr if bias_lr is not None and group.get("kind") == "biases" else lr
        group["lr"] = base * group.get("lr_mult", 1.0)


# --- schedules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlateauState:
    """Where the plateau schedule stands.

    Attributes:
        best: lowest validation error that counted as an improvement (inf before any epoch).
        bad_epochs: epochs since the last improvement or cut.
        drops: lr cuts made so far; the lr is ``base_lr * factor ** drops``.
    """

    best: float = math.inf
    bad_epochs: int = 0
    drops: int = 0


def plateau_step(
    state: PlateauState, val_error: float, cfg: ScheduleConfig
) -> tuple[PlateauState, str]:
    """Advance the paper's schedule by one epoch (§5: lr / 10 when validation error plateaus).

    Events:
        "improved": ``val_error < best - threshold``; best is updated, bad_epochs reset.
        "wait": no improvement yet, fewer than ``patience`` bad epochs.
        "drop": the ``patience``-th bad epoch in a row (patience 0 acts as 1): cut the lr
            (drops + 1) and reset bad_epochs; best is kept.
        "stop": that plateau came after ``max_drops`` cuts: the paper ended training after the
            plateau that followed its third cut.

    A NaN error never counts as an improvement.
    """
    if val_error < state.best - cfg.threshold:
        return PlateauState(best=float(val_error), bad_epochs=0, drops=state.drops), "improved"
    bad = state.bad_epochs + 1
    if bad < max(cfg.patience, 1):
        return replace(state, bad_epochs=bad), "wait"
    if state.drops >= cfg.max_drops:
        return replace(state, bad_epochs=bad), "stop"
    return replace(state, bad_epochs=0, drops=state.drops + 1), "drop"


def milestone_scale(epoch: int, cfg: ScheduleConfig) -> float:
    """``factor ** (number of milestones <= epoch)``, for 0-based epochs.

    With milestones (30, 60) and factor 0.1 (torchvision): epochs 0-29 x1, 30-59 x0.1, 60+ x0.01.
    """
    return cfg.factor ** sum(1 for m in cfg.milestones if m <= epoch)


class LRSchedule:
    """The configured schedule as a small object the trainer checkpoints.

    Use: at the start of epoch ``e`` call ``set_lr(optimizer, schedule.lr(e))``; after its
    validation call ``event = schedule.observe(val_error, best)`` and stop training on "stop".
    The lowest validation error so far (``best``) is the training position's to keep
    (``session.Position``); the plateau rule keeps only what it compares against.
    """

    def __init__(self, cfg: ScheduleConfig, base_lr: float) -> None:
        self.cfg = cfg
        self.base_lr = base_lr
        self.plateau = PlateauState()

    def lr(self, epoch: int) -> float:
        """Weight lr for 0-based ``epoch`` (plateau: set by the cuts so far; epoch unused)."""
        if self.cfg.type == "plateau":
            return self.base_lr * self.cfg.factor**self.plateau.drops
        return self.base_lr * milestone_scale(epoch, self.cfg)

    def bias_lr(self, epoch: int) -> float:
        """The lr the biases' ``lr_mult`` multiplies: ``lr(epoch)`` unless the schedule gives
        the biases cuts of their own (``bias_milestones``, ``bias_factor``; cuda-convnet2)."""
        c = self.cfg
        if c.type == "plateau" or (c.bias_milestones is None and c.bias_factor is None):
            return self.lr(epoch)
        milestones = c.milestones if c.bias_milestones is None else c.bias_milestones
        factor = c.factor if c.bias_factor is None else c.bias_factor
        own = replace(c, milestones=milestones, factor=factor)
        return self.base_lr * milestone_scale(epoch, own)

    def observe(self, val_error: float, best: float) -> str:
        """Record an epoch's validation error; return the event (see ``plateau_step``).

        ``best`` is the lowest validation error of the epochs before. For milestones the
        event is "improved" (below ``best``) or "wait", never "drop" or "stop": the cuts
        follow the epoch number.
        """
        if self.cfg.type == "plateau":
            self.plateau, event = plateau_step(self.plateau, val_error, self.cfg)
            return event
        return "improved" if val_error < best else "wait"

    def state_dict(self) -> dict[str, Any]:
        """Plain Python numbers and strings, safe for ``torch.load(weights_only=True)``."""
        p = self.plateau
        return {
            "type": self.cfg.type,
            "plateau_best": p.best,
            "bad_epochs": p.bad_epochs,
            "drops": p.drops,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; ``base_lr`` and the settings still come from the config.

        Raises:
            UserError: the state was saved by a schedule of another type.
        """
        if state.get("type") != self.cfg.type:
            raise UserError(
                f"the checkpoint's lr schedule is {state.get('type')!r} but the config says "
                f"{self.cfg.type!r}; resume with the run's own config (schedule.type)"
            )
        self.plateau = PlateauState(
            best=float(state["plateau_best"]),
            bad_epochs=int(state["bad_epochs"]),
            drops=int(state["drops"]),
        )
