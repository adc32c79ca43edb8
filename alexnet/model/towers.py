"""The paper's two towers on two devices (§3.2, Fig. 2): the form in which the net was trained.

Tower A's half of every layer lives on ``devices[0]`` and tower B's on ``devices[1]``. The towers
exchange activations only where the paper's two GPUs did: at the inputs of conv3, fc6, fc7 and fc8.
conv2, conv4 and conv5 see their own tower's maps only, and LRN runs inside each tower. The maths is
that of ``alexnet.model.AlexNet`` with ``groups=2``, built from the same pieces, and the checkpoint
format is that single-device model's state dict (``canonical_state_dict``), so a run can move
between the two forms. Dropout draws one full-width mask on ``devices[0]``, exactly as the
single-device model would, and gives each tower its half, so both forms drop the same units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from alexnet.config import ModelConfig
from alexnet.model.layers import PaperDropout, draw_dropout_mask
from alexnet.model.network import (
    AlexNet,
    build_activation,
    build_conv1_padding,
    build_lrn,
    build_model,
    build_pool,
    fused_relu,
    lrn_act_pool,
)

# Layers split in half along their outputs (kernels / neurons), one half per tower. For the
# grouped conv2/4/5 the halves of the weight are exactly the two groups; conv3 and fc6/fc7 keep
# their whole input (the cross-talk). fc6's input is pool5 flattened channel-major, so tower A's
# 128 maps are features 0..4607 and B's 4608..9215. fc8 stays whole, on devices[0].
SPLIT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def split_canonical(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Canonical names (``conv2.weight``) to tower names (``conv2a.weight``, ``conv2b.weight``).

    Works for any per-parameter mapping: a state dict, gradients or optimiser buffers.
    """
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        layer, _, kind = key.partition(".")
        if layer in SPLIT_LAYERS:
            out[f"{layer}a.{kind}"], out[f"{layer}b.{kind}"] = value.chunk(2, dim=0)
        else:
            out[key] = value
    return out


def merge_towers(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Tower names back to canonical names; the inverse of ``split_canonical``.

    Each merged tensor lies on the device of its tower-A half.
    """
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        layer, _, kind = key.partition(".")
        if layer[:-1] not in SPLIT_LAYERS:
            out[key] = value
        elif layer.endswith("a"):
            other = tensors[f"{layer[:-1]}b.{kind}"]
            out[f"{layer[:-1]}.{kind}"] = torch.cat([value, other.to(value.device)])
    return out


def _half(layer: nn.Module) -> nn.Module:
    """One tower's share of a canonical layer: half its outputs, the inputs one group sees."""
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            layer.in_channels // layer.groups,
            layer.out_channels // 2,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
        )
    return nn.Linear(layer.in_features, layer.out_features // 2)


class TwoDeviceAlexNet(nn.Module):
    """AlexNet with tower A on ``devices[0]`` and tower B on ``devices[1]``; logits on A's device.

    Args:
        cfg: the model config (or a whole ``Config``); ``arch`` must be ``two_tower`` and LRN, if
            enabled, per tower.
        devices: two devices, e.g. ``("cuda:0", "cuda:1")``; ``("cpu", "cpu")`` works for tests.
        state_dict: canonical (single-device ``AlexNet``) weights; ``None`` initialises exactly as
            ``build_model(cfg)`` does from the same random state.
    """

    def __init__(
        self,
        cfg: Any,
        devices: Sequence[str | torch.device],
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        cfg = getattr(cfg, "model", cfg)
        if cfg.arch != "two_tower":
            raise ValueError(f"TwoDeviceAlexNet needs model.arch two_tower, got {cfg.arch!r}")
        if cfg.lrn.enabled and not cfg.lrn.per_tower:
            raise ValueError(
                "TwoDeviceAlexNet needs model.lrn.per_tower true: an LRN across all maps "
                "would need the two devices to exchange maps at lrn1 and lrn2; use the "
                "single-device model for Caffe's LRN"
            )
        if len(devices) != 2:
            raise ValueError(f"TwoDeviceAlexNet needs exactly two devices, got {list(devices)}")
        self.cfg: ModelConfig = cfg
        self.devices = tuple(torch.device(d) for d in devices)
        with torch.device("meta"):  # shapes only; the weights are loaded below
            shapes = AlexNet(cfg)
            halves = {f"{n}{t}": _half(getattr(shapes, n)) for n in SPLIT_LAYERS for t in "ab"}
        for name, half in halves.items():
            device = self.devices[1] if name.endswith("b") else self.devices[0]
            self.add_module(name, half.to_empty(device=device))
        self.fc8 = shapes.fc8.to_empty(device=self.devices[0])
        self.pad1 = build_conv1_padding(cfg.conv1_geometry)
        relu1, relu2 = fused_relu(cfg)
        self.lrn1 = build_lrn(cfg.lrn, 1, relu1)  # groups=1: inside one tower's maps
        self.lrn2 = build_lrn(cfg.lrn, 1, relu2)
        self.pool1, self.pool2, self.pool5 = (build_pool(cfg.pooling) for _ in range(3))
        self.act = build_activation(cfg.activation)
        self.drop6 = PaperDropout(cfg.dropout.p, cfg.dropout.style)
        self.drop7 = PaperDropout(cfg.dropout.p, cfg.dropout.style)
        weights = build_model(cfg).state_dict() if state_dict is None else state_dict
        self.load_canonical_state_dict(weights)

    @classmethod
    def from_model(cls, model: AlexNet, devices: Sequence[str | torch.device]) -> TwoDeviceAlexNet:
        """The two-device form of a single-device ``AlexNet`` (same config and weights, and
        the same frozen parameters: ``requires_grad`` is carried to both halves)."""
        towers = cls(model.cfg, devices, state_dict=model.state_dict())
        for name, p in towers.named_parameters():  # conv2a.weight -> conv2.weight
            layer, _, kind = name.partition(".")
            canonical = layer[:-1] if layer[:-1] in SPLIT_LAYERS else layer
            p.requires_grad_(model.get_parameter(f"{canonical}.{kind}").requires_grad)
        return towers

    @classmethod
    def from_state_dict(
        cls, cfg: Any, state_dict: Mapping[str, Tensor], devices: Sequence[str | torch.device]
    ) -> TwoDeviceAlexNet:
        """Build from a canonical state dict (e.g. a checkpoint's ``model``)."""
        return cls(cfg, devices, state_dict=state_dict)

    def load_canonical_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy canonical (single-device) weights into the towers, each half to its device."""
        self.load_state_dict(split_canonical(state_dict), strict=True)

    def canonical_state_dict(self) -> dict[str, Tensor]:
        """The weights as the single-device ``AlexNet``'s state dict (tensors on ``devices[0]``)."""
        return merge_towers(self.state_dict())

    def to_alexnet(self) -> AlexNet:
        """A single-device ``AlexNet`` with these weights, on the CPU."""
        with torch.device("meta"):  # no throw-away initialisation
            model = AlexNet(self.cfg)
        model.to_empty(device="cpu").load_state_dict(self.canonical_state_dict())
        return model

    def forward(self, x: Tensor) -> Tensor:
        a = self._conv1(self.conv1a, x.to(self.devices[0]))  # (N, 48, 27, 27) on devices[0]
        b = self._conv1(self.conv1b, x.to(self.devices[1]))  # (N, 48, 27, 27) on devices[1]
        a = lrn_act_pool(self.lrn2, self.act, self.pool2, self.conv2a(a), True)  # (N, 128, 13, 13)
        b = lrn_act_pool(self.lrn2, self.act, self.pool2, self.conv2b(b), True)  # own maps only
        a, b = self._talk("conv3", a, b)  # (N, 192, 13, 13) each, from both towers' 256 maps
        a, b = self.act(self.conv4a(a)), self.act(self.conv4b(b))  # (N, 192, 13, 13)
        a, b = self.pool5(self.act(self.conv5a(a))), self.pool5(self.act(self.conv5b(b)))
        a, b = torch.flatten(a, 1), torch.flatten(b, 1)  # (N, 4608) each, halves of fc6's input
        inputs = self.cfg.dropout.placement == "inputs"
        for name, drop in (("fc6", self.drop6), ("fc7", self.drop7)):
            a, b = self._dropout(drop, a, b) if inputs else (a, b)
            a, b = self._talk(name, a, b)  # (N, 2048) each, from all 9216 / 4096 features
            a, b = (a, b) if inputs else self._dropout(drop, a, b)
        return self.fc8(torch.cat([a, b.to(a.device)], 1))  # (N, num_classes) on devices[0]

    def _conv1(self, conv: nn.Module, x: Tensor) -> Tensor:
        x = conv(self.pad1(x))  # (N, 48, 55, 55)
        act_first = self.cfg.lrn.conv1_position == "after_relu"
        return lrn_act_pool(self.lrn1, self.act, self.pool1, x, act_first)

    def _talk(self, name: str, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Layer ``name`` (then the activation) in both towers, each fed both towers' outputs."""
        layer_a, layer_b = getattr(self, name + "a"), getattr(self, name + "b")
        out_a = layer_a(torch.cat([a, b.to(a.device)], 1))
        out_b = layer_b(torch.cat([a.to(b.device), b], 1))
        return self.act(out_a), self.act(out_b)

    def _dropout(self, drop: PaperDropout, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Dropout with one mask over both halves, drawn on devices[0] like the single model's."""
        if not (drop.training and drop.p > 0):
            return drop(a), drop(b)
        mask = draw_dropout_mask((a.shape[0], a.shape[1] + b.shape[1]), drop.p, a)
        mask_a, mask_b = mask.split([a.shape[1], b.shape[1]], dim=1)
        return drop.apply_mask(a, mask_a), drop.apply_mask(b, mask_b.to(b.device))
