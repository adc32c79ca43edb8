"""A trained network ready for use, with everything its inputs need.

``load_trained`` resolves a name (a checkpoint of ours, ``torchvision``, or a torchvision state
dict file; ``weights.load_weights``), rebuilds the model from the config stored with the weights,
never from the command line, and puts it in eval mode on one device. A ``Trained`` keeps the
preprocessing the network was trained with (the training set's mean image or torchvision's
channel statistics, the input size, the channel order, how the stored images were resized) and
the class names in words, so ``eval``, ``predict``, ``features``, ``export`` and the figures all
treat their inputs as training did.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet import runtime
from alexnet.config import Config, ParallelConfig, input_size
from alexnet.data import normalize as N
from alexnet.data.loaders import EvalLoader
from alexnet.data.packed import PackedSplit, Stats
from alexnet.errors import UserError
from alexnet.inference.weights import load_weights
from alexnet.model import AlexNet


@dataclass
class Trained:
    """A trained network (eval mode, on ``rt.device``) and how its inputs are made."""

    name: str  # the checkpoint path, or "torchvision"
    cfg: Config  # the config it was trained with (data and eval changes of load_trained applied)
    model: AlexNet
    rt: runtime.Runtime  # its device and the run's precision settings
    stats: Stats | None  # training-set statistics (None for torchvision's weights)
    classes: list[str]  # class ids (wnids), the order of the outputs
    class_names: list[str]  # the same classes in words ("tench, Tinca tinca")
    epoch: int | None = None

    @property
    def input_size(self) -> int:
        return input_size(self.cfg.model)

    def normalizer(self) -> N.Normalizer:
        """Mean subtraction (or torchvision's scaling) and channel order, as in training."""
        data = self.cfg.data
        return N.build_normalizer(
            self.stats,
            data.normalize,
            self.input_size,
            self.rt.device,
            channel_order=data.channel_order,
        )

    def split(self, name: str | None = None) -> PackedSplit:
        """A split (default: the validation split) of the data set in ``cfg.data.root``."""
        return PackedSplit(self.cfg.data.root, name or self.cfg.data.val_split)

    def loader(
        self,
        split: PackedSplit,
        views: int = 1,
        batch_size: int | None = None,
        same_classes: bool = True,
    ) -> EvalLoader:
        """Batches of ``split`` made the way this network was evaluated in training (``views``
        1 or 10) on its device; ``same_classes``: refuse a split whose classes are not the
        network's outputs."""
        if same_classes and split.classes != self.classes:
            raise UserError(
                f"{split.root} has other classes than {self.name} was trained on "
                f"({len(split.classes)} vs {len(self.classes)})"
            )
        size = batch_size or self.cfg.eval.batch_size
        at = runtime.Placement(self.rt.device)
        return EvalLoader(split, self.stats, self.cfg.data, self.cfg.model, views, size, at)


def load_trained(
    spec: str | Path,
    device: str | None = None,
    *,
    data: Path | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
) -> Trained:
    """The network ``spec`` names, on ``device`` (default: cuda:0 if present, else the CPU).

    ``data``, ``workers`` and ``batch_size`` replace the stored ``data.root``,
    ``data.workers`` and ``eval.batch_size`` where given.

    Raises:
        UserError: missing, unreadable or foreign files, weights that do not fit their config,
            torchvision's weights unavailable offline, a device this machine lacks.
    """
    weights = load_weights(spec)
    cfg = _with(weights.config, "data", root=data, workers=workers)
    cfg = _with(cfg, "eval", batch_size=batch_size)
    rt = _runtime(device, cfg)
    model = _build(cfg, weights.state_dict, weights.description).to(rt.device)
    if weights.origin == "torchvision":
        from torchvision.models import AlexNet_Weights

        categories = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
        return Trained(str(spec), cfg, model, rt, None, categories, categories)
    state = weights.checkpoint or {}
    if "data_stats" not in state:
        raise UserError(f"{spec} has no 'data_stats' entry; it was not written by alexnet.train")
    classes = list(state.get("classes") or range(cfg.model.num_classes))
    names = list(state.get("class_names") or _names_from_data(cfg, classes))
    stats = stats_from(state["data_stats"])
    return Trained(str(spec), cfg, model, rt, stats, classes, names, state.get("epoch"))


def stats_from(payload: dict[str, torch.Tensor]) -> Stats:
    """The ``Stats`` a checkpoint stores beside its weights (``data_stats``)."""
    arrays = {k: payload[k].double().numpy() for k in ("mean", "cov", "eigval", "eigvec")}
    return Stats(arrays["mean"], arrays["cov"], arrays["eigval"], arrays["eigvec"], pixels=0)


def _runtime(device: str | None, cfg: Config) -> runtime.Runtime:
    """One device and the run's precision settings."""
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    devices = (device,) if device else ()
    return runtime.setup(ParallelConfig(mode="single", devices=devices), cfg.runtime)


def _build(cfg: Config, state_dict: dict[str, torch.Tensor], name: str) -> AlexNet:
    with torch.device("meta"):  # no throw-away initialisation
        model = AlexNet(cfg.model)
    model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"{name}: weights do not fit its own config: {first}") from None
    return model.eval()


def _with(cfg: Config, section: str, **values: Any) -> Config:
    """``cfg`` with the values that are not None set in ``section``."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return cfg
    changed = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **{section: changed})


def _names_from_data(cfg: Config, ids: list[str]) -> list[str]:
    """Checkpoints written before class names were stored: the data set's names, else the ids."""
    try:
        split = PackedSplit(cfg.data.root, cfg.data.val_split)
    except UserError:
        return ids
    return split.class_names if split.classes == ids else ids
