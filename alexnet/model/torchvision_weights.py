"""torchvision's AlexNet weights in our model, and our ``owt`` weights in torchvision's model.

``torchvision.models.alexnet`` is the "one weird trick" net (faithful-spec 1.4): our
``model.arch: owt`` with torchvision's conv1 padding, no LRN and its dropout. Its layers map
one to one onto ours::

    features.0 3 6 8 10  ->  conv1 conv2 conv3 conv4 conv5
    classifier.1 4 6     ->  fc6 fc7 fc8

With ``TORCHVISION_MODEL``'s settings our model computes exactly torchvision's function. Going
back (``to_torchvision``), the paper's test-time dropout scaling (x0.5) is folded into the next
layer's weights, so an ``owt`` net trained with paper-style dropout runs unchanged in
torchvision; what torchvision cannot express (LRN, another conv1 geometry, conv6) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alexnet.config import Config, ModelConfig, config_from_dict
from alexnet.errors import UserError

TV_TO_OURS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}
WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # AlexNet_Weights.IMAGENET1K_V1, in the torch hub cache
# ModelConfig values under which our model computes torchvision's alexnet (dotted names).
TORCHVISION_MODEL = {
    "arch": "owt",
    "conv1_geometry": "pad2_224",
    "lrn.enabled": False,
    "activation": "relu",
    "pooling": "overlapping",
    "extra_conv6": False,
    "dropout.style": "inverted",
    "dropout.placement": "inputs",
}
# Settings that only change training; to_torchvision can express the others' eval function.
_TRAINING_ONLY = ("dropout.style", "dropout.placement")


def _value(cfg: ModelConfig, dotted: str) -> object:
    value: object = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def torchvision_differences(cfg: ModelConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """``model.<key>: ours (torchvision: theirs)`` for each setting that differs."""
    return [
        f"model.{key}: {_value(cfg, key)} (torchvision: {want})"
        for key, want in TORCHVISION_MODEL.items()
        if key not in ignore and _value(cfg, key) != want
    ]


def torchvision_config() -> Config:
    """A config under which our model is torchvision's AlexNet: ``TORCHVISION_MODEL``, its
    input scaling (``channel_mean_std``) and its centre-crop evaluation."""
    model: dict[str, Any] = {"init": {"preset": "pytorch_default"}}
    for dotted, value in TORCHVISION_MODEL.items():
        *parents, key = dotted.split(".")
        node = model
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    raw = {"model": model, "data": {"normalize": "channel_mean_std"}, "eval": {"views": 1}}
    return config_from_dict(raw, "torchvision's alexnet")


def is_torchvision_state_dict(state: Mapping[str, object]) -> bool:
    """Whether ``state`` has exactly the keys of ``torchvision.models.alexnet().state_dict()``."""
    expected = {f"{tv}.{kind}" for tv in TV_TO_OURS for kind in ("weight", "bias")}
    return set(state) == expected


def read_torchvision_file(path: str | Path) -> dict[str, Tensor] | None:
    """The state dict in ``path`` if the file holds torchvision's AlexNet weights, else None
    (missing, unreadable or anything else: the caller says what it expected)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any reason the file is not a readable state dict
        return None
    return data if isinstance(data, dict) and is_torchvision_state_dict(data) else None


def from_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision AlexNet state dict under our layer names (``conv1.weight`` ...).

    Raises:
        UserError: ``state`` is not a torchvision AlexNet state dict.
    """
    if not is_torchvision_state_dict(state):
        keys = ", ".join(sorted(state)[:4])
        raise UserError(f"not a torchvision AlexNet state dict (keys: {keys} ...)")
    return {
        f"{ours}.{kind}": state[f"{tv}.{kind}"]
        for tv, ours in TV_TO_OURS.items()
        for kind in ("weight", "bias")
    }


def to_torchvision(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our ``owt`` weights as a ``torchvision.models.alexnet`` state dict with the same outputs
    in eval mode.

    With paper-style dropout our eval pass multiplies the dropped activations by ``1 - p``;
    torchvision's (inverted) dropout is the identity at test time, so the factor moves into the
    weights of the layers that read those activations (fc7 and fc8 for dropout on the outputs of
    fc6 and fc7; fc6 and fc7 for dropout on their inputs).

    Raises:
        UserError: ``cfg`` computes something torchvision's AlexNet cannot.
    """
    problems = torchvision_differences(cfg, ignore=_TRAINING_ONLY)
    if problems:
        raise UserError(
            "torchvision's AlexNet cannot run this model: " + "; ".join(problems) + "; only "
            "arch owt with conv1_geometry pad2_224, no LRN, relu and no conv6 converts"
        )
    ours = dict(state)
    if cfg.dropout.style == "paper":
        readers = ("fc7", "fc8") if cfg.dropout.placement == "outputs" else ("fc6", "fc7")
        for layer in readers:
            ours[f"{layer}.weight"] = ours[f"{layer}.weight"] * (1 - cfg.dropout.p)
    return {
        f"{tv}.{kind}": ours[f"{layer}.{kind}"]
        for tv, layer in TV_TO_OURS.items()
        for kind in ("weight", "bias")
    }


def download_weights(progress: bool = True) -> dict[str, Tensor]:
    """torchvision's IMAGENET1K_V1 AlexNet weights, from the torch hub cache or downloaded once.

    Raises:
        UserError: they are not cached and cannot be downloaded (offline), with where to put
            the file by hand.
    """
    from torchvision.models import AlexNet_Weights

    cache = torch.hub.get_dir() + "/checkpoints"
    try:
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(
            progress=progress, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        reason = getattr(err, "reason", None) or str(err).splitlines()[0]
        raise UserError(
            f"cannot get torchvision's AlexNet weights ({reason}): download "
            f"{AlexNet_Weights.IMAGENET1K_V1.url} on a machine that is online and put it in "
            f"{cache}/, or set finetune.init_from to the file's path"
        ) from None
