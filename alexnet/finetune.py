"""Fine-tuning: start a training run from trained weights (the ``finetune`` config section).

Paper §6: the "1 CNN*" entries were pre-trained on a larger set and then fine-tuned on
ILSVRC-2012. Here ``finetune.init_from`` names where the weights come from: ``torchvision``
(its IMAGENET1K_V1 AlexNet through torchvision's weights API), a ``last.pt``/``best.pt``
written by ``alexnet.train``, or a file holding a torchvision AlexNet state dict. Only the
weights are taken: the optimiser, the schedule and the run folder are new. Layers whose shapes
differ (fc8 for another class count) keep ``model.init``'s initialisation and are listed in the
log; ``finetune.freeze`` keeps named layers fixed and ``finetune.lr_mult`` scales a layer's
learning rate (``alexnet.optim.param_groups``).

``python -m alexnet.finetune --config configs/scene15_finetune.yaml`` is ``alexnet.train`` with
a check first: it refuses a config without ``finetune.init_from``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from alexnet import checkpoint as ckpt
from alexnet import runtime as runtime_lib
from alexnet.config import Config, config_from_dict, load_config
from alexnet.errors import EXIT_USER_ERROR, UserError, report_user_errors
from alexnet.log import info
from alexnet.model import torchvision_weights as tvw
from alexnet.optim import layer_of


@dataclass(frozen=True)
class Source:
    """Trained weights to start from, under our layer names (``conv1.weight`` ...)."""

    weights: dict[str, Tensor]
    description: str  # for the log: "torchvision's ... weights", "runs/x/best.pt (epoch 12)"
    config: Config | None  # the source's config (our checkpoints); None for torchvision's


def load_source(cfg: Config, rt: runtime_lib.Runtime | None = None) -> Source | None:
    """The weights ``cfg.finetune.init_from`` names, or None when it is null.

    Under DDP rank 0 fetches first (a download lands once in the torch hub cache).

    Raises:
        UserError: the file is missing or not weights we can read; torchvision's weights are
            neither cached nor downloadable (offline), with where to put the file.
    """
    init_from = cfg.finetune.init_from
    if init_from is None:
        return None
    if rt is None:
        return _load(init_from, progress=True)
    with runtime_lib.main_process_first(rt):
        return _load(init_from, progress=rt.is_main)


def _load(init_from: str, progress: bool) -> Source:
    if init_from == "torchvision":
        weights = tvw.from_torchvision(tvw.download_weights(progress))
        return Source(weights, "torchvision's IMAGENET1K_V1 AlexNet weights", None)
    path = Path(init_from)
    try:
        state = ckpt.load_checkpoint(path)
    except UserError as err:
        bare = tvw.read_torchvision_file(path)
        if bare is None:
            raise UserError(
                f"finetune.init_from: {err}; give a checkpoint written by alexnet.train, a "
                f"torchvision AlexNet state dict ({tvw.WEIGHTS_FILE}) or 'torchvision'"
            ) from None
        return Source(tvw.from_torchvision(bare), f"torchvision AlexNet weights in {path}", None)
    config = config_from_dict(state["config"], f"config stored in {path}")
    return Source(dict(state["model"]), f"{path} (epoch {state.get('epoch')})", config)


def start_from(model: nn.Module, source: Source, enabled: bool = True) -> dict[str, list[str]]:
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
        missing = [k for k in keys if k not in source.weights]
        if missing:
            report["fresh"].append(f"{layer}: not in the source")
            continue
        bad = [k for k in keys if source.weights[k].shape != own[k].shape]
        if bad:
            here, there = tuple(own[bad[0]].shape), tuple(source.weights[bad[0]].shape)
            report["fresh"].append(f"{layer}: {here} here, {there} in the source")
            continue
        merged.update({k: source.weights[k] for k in keys})
        report["loaded"].append(layer)
    report["ignored"] = sorted({k.split(".")[0] for k in source.weights} - set(layers))
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


def differences(cfg: Config, source: Source) -> list[str]:
    """Where the run would feed the source's weights something other than what they learnt
    from: other model settings, or another input normalisation or channel order."""
    if source.config is None:  # torchvision's net: its geometry, no LRN, [0,1]/std RGB input
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


def prepare_model(model: nn.Module, cfg: Config, source: Source | None, enabled: bool) -> None:
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


EPILOG = """examples:
  python -m alexnet.finetune --config configs/scene15_finetune.yaml
  python -m alexnet.finetune --config configs/scene15_finetune_ours.yaml \\
      --set finetune.init_from=runs/ilsvrc2012/best.pt
  python -m alexnet.finetune --config configs/scene15_finetune.yaml \\
      --set finetune.init_from=/path/to/alexnet-owt-7be5be79.pth
  python -m alexnet.finetune --config configs/scene15_finetune.yaml \\
      --set "finetune.freeze=[conv1,conv2,conv3,conv4,conv5]" --set finetune.lr_mult.fc8=10

The run is an ordinary alexnet.train run (see its --help): resume it with --resume auto.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.finetune",
        description="Fine-tune trained weights on a data set: python -m alexnet.train with "
        "finetune.init_from required (torchvision, a checkpoint of ours, or a torchvision "
        "state dict file). Layers that do not fit start afresh; finetune.freeze keeps layers "
        "fixed; finetune.lr_mult scales a layer's learning rate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, required=True, help="YAML config with a finetune section")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)"
    )
    p.add_argument("--resume", metavar="PATH|auto", help="continue a fine-tuning run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``alexnet.train`` for a config whose ``finetune.init_from`` is set."""
    from alexnet import train

    args = parse_args(argv)

    def check() -> int:
        if load_config(args.config, args.set).finetune.init_from is None:
            raise UserError(
                f"{args.config} does not set finetune.init_from: add --set "
                "finetune.init_from=torchvision (or a checkpoint), or train from scratch with "
                "python -m alexnet.train"
            )
        return 0

    if report_user_errors(check):
        return EXIT_USER_ERROR
    forwarded = ["--config", str(args.config), *(x for s in args.set for x in ("--set", s))]
    forwarded += ["--resume", args.resume] if args.resume else []
    return train.main(forwarded + (["--no-progress"] if args.no_progress else []))


if __name__ == "__main__":
    sys.exit(main())
