"""Fine-tuning: start a training run from trained weights (the ``finetune`` config section).

Paper §6: the "1 CNN*" entries were pre-trained on a larger set and then fine-tuned on
ILSVRC-2012. ``finetune.init_from`` names where the weights come from (resolved by
``inference.weights``: torchvision's ImageNet weights, a checkpoint of ours, or a torchvision
state dict file). Only the weights are taken: the optimiser, the schedule and the run folder are
new. Layers whose shapes differ (fc8 for another class count) keep ``model.init``'s
initialisation and are listed in the log; ``finetune.freeze`` keeps named layers fixed and
``finetune.lr_mult`` scales a layer's learning rate (``optim.param_groups``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from alexnet import runtime as runtime_lib
from alexnet.config import Config
from alexnet.errors import UserError
from alexnet.inference.weights import Weights, load_weights
from alexnet.log import info
from alexnet.model import torchvision_weights as tvw
from alexnet.training.optim import layer_of


def load_source(cfg: Config, rt: runtime_lib.Runtime) -> Weights | None:
    """The weights ``cfg.finetune.init_from`` names, or None when it is null.

    Under DDP rank 0 fetches first, so a download lands once in the torch hub cache.

    Raises:
        UserError: as ``load_weights``, prefixed with the config key.
    """
    if cfg.finetune.init_from is None:
        return None
    with runtime_lib.main_process_first(rt):
        try:
            return load_weights(cfg.finetune.init_from, progress=rt.is_main)
        except UserError as err:
            raise UserError(f"finetune.init_from: {err}") from None


def start_from(model: nn.Module, source: Weights, enabled: bool = True) -> dict[str, list[str]]:
    """Copy every layer of ``source`` whose shapes fit into ``model`` (a canonical ``AlexNet``).

    Layers that do not fit, or that the source lacks, keep their current (``model.init``)
    weights. Logs what was loaded, kept fresh and ignored (``enabled``: this process logs).

    Returns:
        ``{"loaded": [...], "fresh": ["fc8: (15, 4096) here, (1000, 4096) in the source"],
        "ignored": [layers only the source has]}``.

    Raises:
        UserError: not one layer fits (another architecture, e.g. two_tower vs owt).
    """
    own = model.state_dict()
    layers = list(dict.fromkeys(k.split(".")[0] for k in own))
    report: dict[str, list[str]] = {"loaded": [], "fresh": [], "ignored": []}
    merged = dict(own)
    for layer in layers:
        keys = [k for k in own if k.split(".")[0] == layer]
        missing = [k for k in keys if k not in source.state_dict]
        if missing:
            report["fresh"].append(f"{layer}: not in the source")
            continue
        bad = [k for k in keys if source.state_dict[k].shape != own[k].shape]
        if bad:
            here, there = tuple(own[bad[0]].shape), tuple(source.state_dict[bad[0]].shape)
            report["fresh"].append(f"{layer}: {here} here, {there} in the source")
            continue
        merged.update({k: source.state_dict[k] for k in keys})
        report["loaded"].append(layer)
    report["ignored"] = sorted({k.split(".")[0] for k in source.state_dict} - set(layers))
    if not report["loaded"]:
        raise UserError(
            f"finetune.init_from: no layer of {source.description} fits this model "
            f"({'; '.join(report['fresh'])}); check model.arch and model.extra_conv6"
        )
    model.load_state_dict(merged)
    info(f"fine-tuning from {source.description}: loaded {', '.join(report['loaded'])}", enabled)
    if report["fresh"]:
        info(f"  initialised afresh (model.init): {'; '.join(report['fresh'])}", enabled)
    if report["ignored"]:
        info(f"  not used (this model has no such layer): {', '.join(report['ignored'])}", enabled)
    return report


def freeze(model: nn.Module, layers: Sequence[str]) -> None:
    """Keep ``layers`` fixed: their parameters get ``requires_grad=False``, so the optimiser
    leaves them out and no gradient is computed for them. Works on both model forms."""
    wanted = set(layers)
    for name, p in model.named_parameters():
        if layer_of(name) in wanted:
            p.requires_grad_(False)


def differences(cfg: Config, source: Weights) -> list[str]:
    """Where the run would feed the source's weights something other than what they learnt
    from: other model settings, or another input normalisation or channel order."""
    if source.origin == "torchvision":  # its geometry, no LRN, [0,1]/std RGB input
        out = tvw.torchvision_differences(cfg.model)
        theirs = {"normalize": "channel_mean_std", "channel_order": "rgb"}
    else:
        keys = ("arch", "conv1_geometry", "activation", "pooling", "lrn", "dropout")
        mine, src = cfg.model, source.config.model
        out = [f"model.{k} differs" for k in keys if getattr(mine, k) != getattr(src, k)]
        theirs = {k: getattr(source.config.data, k) for k in ("normalize", "channel_order")}
    for key, value in theirs.items():
        if getattr(cfg.data, key) != value:
            out.append(f"data.{key}: {getattr(cfg.data, key)} (the source: {value})")
    return out


def prepare_model(model: nn.Module, cfg: Config, source: Weights | None, enabled: bool) -> None:
    """Load ``source`` (if any) into a fresh canonical model, warn about differences between
    the run and the source, and freeze ``finetune.freeze``; ``enabled``: this process logs.
    Called for resumed runs too (``source`` None), so the frozen layers stay frozen."""
    if source is not None:
        start_from(model, source, enabled)
        for line in differences(cfg, source):
            info(f"  warning: {line}", enabled)
    freeze(model, cfg.finetune.freeze)
    if cfg.finetune.freeze or cfg.finetune.lr_mult:
        mults = ", ".join(f"{k} x{v:g}" for k, v in cfg.finetune.lr_mult.items()) or "none"
        frozen = ", ".join(cfg.finetune.freeze) or "none"
        info(f"  frozen: {frozen}; lr multipliers: {mults}", enabled)
