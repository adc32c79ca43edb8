"""A trained network ready for inference, with everything its inputs need.

``load_trained`` reads a checkpoint written by ``alexnet.train`` (or torchvision's AlexNet
weights: ``torchvision``, or a file holding their state dict) and rebuilds the model from the
stored config, never from the command line. A ``Trained`` keeps the preprocessing the network
was trained with (the training set's mean image or torchvision's channel statistics, the input
size, the channel order, how the stored images were resized) and the class names in words, so
``eval``, ``predict``, ``features`` and ``export`` all treat their inputs as training did.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet import runtime
from alexnet.checkpoint import load_checkpoint
from alexnet.config import Config, ParallelConfig, config_from_dict, input_size
from alexnet.data import normalize as N
from alexnet.data.loaders import EvalLoader
from alexnet.data.packed import PackedSplit, Stats
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.model import torchvision_weights as tvw


@dataclass
class Trained:
    """A trained network (eval mode, on the CPU) and how its inputs are made."""

    name: str  # the checkpoint path, or "torchvision"
    cfg: Config  # the config the network was trained with
    model: AlexNet
    stats: Stats | None  # training-set statistics (None for torchvision's weights)
    classes: list[str]  # class ids (wnids), the order of the outputs
    class_names: list[str]  # the same classes in words ("tench, Tinca tinca")
    epoch: int | None = None

    @property
    def input_size(self) -> int:
        return input_size(self.cfg.model)

    def normalizer(self, device: torch.device | str = "cpu") -> N.Normalizer:
        """Mean subtraction (or torchvision's scaling) and channel order, as in training."""
        data = self.cfg.data
        return N.build_normalizer(
            self.stats, data.normalize, self.input_size, device, channel_order=data.channel_order
        )

    def runtime(self, device: str | None = None) -> runtime.Runtime:
        """One device (``device``, default cuda:0 if present, else the CPU) and the run's
        precision settings."""
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        devices = (device,) if device else ()
        return runtime.setup(ParallelConfig(mode="single", devices=devices), self.cfg.runtime)

    def eval_loader(
        self,
        split: PackedSplit,
        views: int,
        batch_size: int,
        device: torch.device | str,
        workers: int | None = None,
        same_classes: bool = True,
    ) -> EvalLoader:
        """Batches of ``split`` made the way this network was evaluated in training;
        ``same_classes``: refuse a split whose classes are not the network's outputs."""
        if same_classes and split.classes != self.classes:
            raise UserError(
                f"{split.root} has other classes than {self.name} was trained on "
                f"({len(split.classes)} vs {len(self.classes)})"
            )
        data = self.cfg.data
        if workers is not None:
            data = dataclasses.replace(data, workers=workers)
        return EvalLoader(
            split,
            self.stats,
            data=data,
            input_size=self.input_size,
            batch_size=batch_size,
            device=device,
            views=views,
        )


def load_trained(spec: str | Path) -> Trained:
    """A checkpoint of ours, ``torchvision``, or a file holding torchvision's AlexNet weights.

    Raises:
        UserError: missing, unreadable or foreign files, weights that do not fit their config,
            torchvision's weights unavailable offline.
    """
    if str(spec) == "torchvision":
        return _torchvision(tvw.download_weights(), "torchvision")
    path = Path(spec)
    try:
        state = load_checkpoint(path)
    except UserError:
        bare = tvw.read_torchvision_file(path)
        if bare is None:
            raise
        return _torchvision(bare, str(path))
    for key in ("config", "model", "data_stats"):
        if key not in state:
            raise UserError(f"{path} has no '{key}' entry; it was not written by alexnet.train")
    cfg = config_from_dict(state["config"], f"config stored in {path}")
    classes = list(state.get("classes") or range(cfg.model.num_classes))
    names = list(state.get("class_names") or classes)
    model = _build(cfg, state["model"], str(path))
    return Trained(
        str(path), cfg, model, stats_from(state["data_stats"]), classes, names, state.get("epoch")
    )


def stats_from(payload: dict[str, torch.Tensor]) -> Stats:
    """The ``Stats`` a checkpoint stores beside its weights (``data_stats``)."""
    arrays = {k: payload[k].double().numpy() for k in ("mean", "cov", "eigval", "eigvec")}
    return Stats(arrays["mean"], arrays["cov"], arrays["eigval"], arrays["eigvec"], pixels=0)


def _build(cfg: Config, weights: dict[str, torch.Tensor], name: str) -> AlexNet:
    with torch.device("meta"):  # no throw-away initialisation
        model = AlexNet(cfg.model)
    model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"{name}: weights do not fit its own config: {first}") from None
    return model.eval()


def _torchvision(state: dict[str, torch.Tensor], name: str) -> Trained:
    from torchvision.models import AlexNet_Weights

    cfg = tvw.torchvision_config()
    categories = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    model = _build(cfg, tvw.from_torchvision(state), name)
    return Trained(name, cfg, model, None, categories, categories)
