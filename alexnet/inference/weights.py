"""Where trained weights come from, resolved in one place.

A name is one of: a ``last.pt`` / ``best.pt`` written by ``alexnet.train``; ``torchvision``
(its IMAGENET1K_V1 AlexNet, through torchvision's weights API, downloaded once into the torch
hub cache); or a file holding a torchvision AlexNet state dict (``alexnet-owt-7be5be79.pth``).
Fine-tuning (``training.finetune``) starts from such weights and inference (``trained``) runs
them; both call ``load_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from alexnet.config import Config, config_from_dict
from alexnet.errors import UserError
from alexnet.model import torchvision_weights as tvw
from alexnet.training.checkpoint import load_checkpoint

TORCHVISION = "torchvision"  # the name that means torchvision's own ImageNet weights


@dataclass(frozen=True)
class Weights:
    """Trained weights under our layer names (``conv1.weight`` ...) and what made them."""

    state_dict: dict[str, Tensor]
    config: Config  # the config they were trained with (torchvision's: ``torchvision_config``)
    origin: Literal["checkpoint", "torchvision"]
    description: str  # for logs: "runs/x/best.pt (epoch 12)", "torchvision's ... weights"
    checkpoint: dict[str, Any] | None = None  # the whole checkpoint, for ours


def load_weights(spec: str | Path, progress: bool = True) -> Weights:
    """The weights ``spec`` names (see the module docstring).

    Raises:
        UserError: a missing, unreadable or foreign file, with what would be accepted; a
            checkpoint without weights or config; torchvision's weights neither cached nor
            downloadable (offline), with where to put the file.
    """
    if str(spec) == TORCHVISION:
        state = tvw.from_torchvision(tvw.download_weights(progress))
        return Weights(state, tvw.torchvision_config(), "torchvision", _TV_NAME)
    path = Path(spec)
    try:
        checkpoint = load_checkpoint(path)
    except UserError as err:
        bare = tvw.read_torchvision_file(path)
        if bare is None:
            raise UserError(
                f"{err}; give a checkpoint written by alexnet.train, a file holding a "
                f"torchvision AlexNet state dict ({tvw.WEIGHTS_FILE}) or '{TORCHVISION}'"
            ) from None
        state = tvw.from_torchvision(bare)
        what = f"torchvision AlexNet weights in {path}"
        return Weights(state, tvw.torchvision_config(), "torchvision", what)
    for key in ("config", "model"):
        if key not in checkpoint:
            raise UserError(f"{path} has no '{key}' entry; it was not written by alexnet.train")
    config = config_from_dict(checkpoint["config"], f"config stored in {path}")
    what = f"{path} (epoch {checkpoint.get('epoch')})"
    return Weights(dict(checkpoint["model"]), config, "checkpoint", what, checkpoint)


_TV_NAME = "torchvision's IMAGENET1K_V1 AlexNet weights"
