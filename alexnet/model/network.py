"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) as one module with named layers.

The paper's two towers (§3.2) run on one device as grouped convolutions: ``groups=2`` in conv2,
conv4 and conv5, which see only their own tower's maps, while conv3 and the fully connected layers
see both (``towers.py`` runs the same maths on two devices). The rest follows §3.1 (ReLU),
§3.3 (LRN, per tower), §3.4 (overlapping pooling), §3.5 (widths), §4.2 (dropout: no scaling in
training, x0.5 at test) and §5 (initialisation). Every alternative (Caffe, cuda-convnet2,
torchvision) is a named ``ModelConfig`` option; see ``faithful-spec.md`` sections 1-3 and 7.

The paper's LRN and dropout live in ``layers.py``, the two-device form in ``towers.py``, and
``python -m alexnet.model [--config FILE] [--set KEY=VALUE ...]`` prints the layer table.
Two speed forms compute the same maths: the tower-local convs can run as one dense conv with a
block-diagonal weight or as one conv per tower (``tower_conv.py``, ``runtime.tower_conv``), and
ReLU, LRN and the overlapping pool after conv1 and conv2 run as one op (``lrn_pool.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from alexnet import paper
from alexnet.config import ALL_LAYERS, LAYERS, InitConfig, LRNConfig, ModelConfig
from alexnet.model.layers import PaperDropout, PaperLRN
from alexnet.model.tower_conv import TowerConv2d
from alexnet.model.variants import SameMapNorm

# Conv widths per arch. one_tower: §3.2 footnote 2, half the kernels except in conv5.
# owt: torchvision / cuda-convnet2 layers-imagenet-1gpu.cfg ("one weird trick"), comparison only.
CONV_WIDTHS = {
    "two_tower": paper.CONV_WIDTHS,
    "one_tower": tuple(w // paper.TOWERS for w in paper.CONV_WIDTHS[:4]) + paper.CONV_WIDTHS[4:],
    "owt": (64, 192, 384, 256, 256),
}
POOL5_SIDE = 6  # [derived] 55 -> 27 -> 13 -> 6 with either pooling
FEATURE_LAYERS = ("pool5", "fc6", "fc7", "fc8")  # what ``AlexNet.forward_to`` can stop at


def _init_table(std: dict[str, float], hidden_bias: float) -> dict[str, tuple[float, float]]:
    """layer: (weight std, bias); std 0.01 unless given, hidden_bias in §5's bias-1 layers
    (and in the optional conv6, a tower-local conv like conv4 and conv5)."""
    hidden = (*paper.BIAS_ONE_LAYERS, "conv6")
    return {
        n: (std.get(n, paper.INIT_WEIGHT_STD), hidden_bias if n in hidden else 0.0)
        for n in ALL_LAYERS
    }


# Initialisation presets (spec 3.1). pytorch_default keeps torch's own init.
INIT_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "paper": _init_table({}, hidden_bias=1.0),  # §5
    "caffe": _init_table({"fc6": 0.005, "fc7": 0.005}, hidden_bias=0.1),  # bvlc_alexnet
    # cuda-convnet2 layers-imagenet-2gpu-model.cfg initW; biases as the paper
    "cuda_convnet2": _init_table({"conv3": 0.03, "conv4": 0.03, "conv5": 0.03}, hidden_bias=1.0),
    "pytorch_default": {},
}  # kaiming has no fixed table: ``_kaiming_table`` computes it from each layer's fan-in


# --- building blocks (towers.py builds its towers from these too) ------------------------------


def build_activation(name: str) -> nn.Module:
    """ReLU (§3.1) or the saturating tanh it is compared with."""
    return {"relu": nn.ReLU, "tanh": nn.Tanh}[name]()


def build_conv1_padding(geometry: str) -> nn.Module:
    """Zero padding before the valid 11x11/4 conv1; every geometry gives 55x55 (spec 1.2)."""
    pad = paper.CONV1_CEIL_PAD_BOTTOM_RIGHT  # cc_ceil: the author's ceiling rule, 3 px overhang
    # ZeroPad2d order: (left, right, top, bottom); pad2_224 = torchvision's padding=2
    pads = {"cc_ceil": (0, pad, 0, pad), "crop227_valid": 0, "pad2_224": 2}
    return nn.ZeroPad2d(pads[geometry]) if pads[geometry] else nn.Identity()


def build_conv(c_in: int, c_out: int, kernel: int, padding: int, groups: int) -> nn.Conv2d:
    """A stride-1 conv; a tower-local one (``groups`` > 1) can run in any of
    ``tower_conv.FORMS`` with the same grouped parameter."""
    conv = TowerConv2d if groups > 1 else nn.Conv2d
    return conv(c_in, c_out, kernel, padding=padding, groups=groups)


def build_pool(kind: str) -> nn.MaxPool2d:
    """Overlapping 3/2 max-pooling (§3.4) or the non-overlapping 2/2 it is compared with."""
    size = paper.POOL_SIZE if kind == "overlapping" else paper.POOL_SIZE_NON_OVERLAPPING
    return nn.MaxPool2d(size, paper.POOL_STRIDE)


def build_lrn(cfg: LRNConfig, groups: int, relu: bool = False) -> nn.Module:
    """PaperLRN with the config's constants, or Identity when LRN is switched off. ``relu``:
    the LRN takes the pre-activation and applies the ReLU before it itself (one fused op)."""
    if not cfg.enabled:
        return nn.Identity()
    return PaperLRN(cfg.size, cfg.alpha, cfg.beta, cfg.k, cfg.alpha_semantics, groups, relu)


def fused_relu(cfg: ModelConfig) -> tuple[bool, bool]:
    """Whether lrn1 and lrn2 apply the ReLU in front of them (§3.3: ReLU, then LRN) themselves."""
    relu = cfg.activation == "relu"
    return relu and cfg.lrn.conv1_position == "after_relu", relu


def relu_then_lrn(lrn: nn.Module, act: nn.Module, x: Tensor) -> Tensor:
    """The activation, then the LRN (§3.3); one op when the LRN fuses the ReLU."""
    return lrn(x) if getattr(lrn, "relu", False) else lrn(act(x))


def lrn_act_pool(
    lrn: nn.Module, act: nn.Module, pool: nn.Module, x: Tensor, act_first: bool
) -> Tensor:
    """``pool(lrn(act(x)))`` (§3.3, ``act_first``) or ``pool(act(lrn(x)))`` (the CC2 configs'
    conv1); the paper's ReLU, LRN and overlapping pool run as one op, ``alexnet::lrn_pool``."""
    relu = _fused_relu(lrn, act, pool, act_first)
    if relu is not None:
        return lrn.pooled(x, relu, paper.POOL_SIZE, paper.POOL_STRIDE)
    return pool(relu_then_lrn(lrn, act, x) if act_first else act(lrn(x)))


def _fused_relu(lrn: nn.Module, act: nn.Module, pool: nn.Module, act_first: bool) -> str | None:
    """``lrn_pool``'s ``relu`` for these layers, or None where they run one by one: another
    activation, LRN or pooling, ``torch.export`` (plain ATen ops: ``alexnet.export``), or a hook
    on one of the layers, which asks to see that layer's own output (``summary.py``)."""
    fusable = isinstance(lrn, PaperLRN) and isinstance(act, nn.ReLU) and _overlapping(pool)
    if not fusable or lrn.relu != act_first or torch.compiler.is_exporting():
        return None
    watched = (lrn, pool) if act_first else (lrn, act, pool)
    if any(m._forward_hooks or m._forward_pre_hooks for m in watched):
        return None
    return "input" if act_first else "output"


def _overlapping(pool: nn.Module) -> bool:
    """Whether ``pool`` is ``build_pool("overlapping")``'s 3x3 stride-2 max-pool."""
    if not isinstance(pool, nn.MaxPool2d) or pool.ceil_mode or pool.return_indices:
        return False
    settings = (pool.kernel_size, pool.stride, pool.padding, pool.dilation)
    pairs = [s if isinstance(s, tuple) else (s, s) for s in settings]
    return pairs == [(paper.POOL_SIZE,) * 2, (paper.POOL_STRIDE,) * 2, (0, 0), (1, 1)]


class AlexNet(nn.Module):
    """The network of §3.5 from a ``ModelConfig``. Input: (N, 3, S, S), mean-subtracted 0-255."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w1, w2, w3, w4, w5 = CONV_WIDTHS[cfg.arch]
        towers = paper.TOWERS if cfg.arch == "two_tower" else 1
        g = {n: towers if n in paper.TOWER_LOCAL_LAYERS else 1 for n in LAYERS}  # §3.2
        lrn_groups = towers if cfg.lrn.per_tower else 1  # False: Caffe's LRN across all maps
        k1, k2, k3, k4, k5 = paper.CONV_KERNELS
        _, p2, p3, p4, p5 = paper.CONV_PADDING
        self.pad1 = build_conv1_padding(cfg.conv1_geometry)
        self.conv1 = nn.Conv2d(3, w1, k1, stride=paper.CONV1_STRIDE)
        relu1, relu2 = fused_relu(cfg)
        self.lrn1 = build_lrn(cfg.lrn, lrn_groups, relu1)
        self.pool1 = build_pool(cfg.pooling)
        self.conv2 = build_conv(w1, w2, k2, p2, g["conv2"])
        self.lrn2 = build_lrn(cfg.lrn, lrn_groups, relu2)
        if cfg.lrn.same_map_norm:  # cuda-convnet2's cnorm2 after LRN2 (not in the paper)
            self.norm2 = SameMapNorm()
        self.pool2 = build_pool(cfg.pooling)
        self.conv3 = build_conv(w2, w3, k3, p3, g["conv3"])
        self.conv4 = build_conv(w3, w4, k4, p4, g["conv4"])
        self.conv5 = build_conv(w4, w5, k5, p5, g["conv5"])
        self.pool5 = build_pool(cfg.pooling)
        if cfg.extra_conv6:  # §6 "1 CNN*": a conv layer over pool5; its shape is our choice
            self.conv6 = build_conv(w5, w5, k5, p5, g["conv5"])
        self.fc6 = nn.Linear(w5 * POOL5_SIDE**2, paper.FC_WIDTHS[0])
        self.fc7 = nn.Linear(paper.FC_WIDTHS[0], paper.FC_WIDTHS[1])
        self.fc8 = nn.Linear(paper.FC_WIDTHS[1], cfg.num_classes)
        self.act = build_activation(cfg.activation)  # parameter-free, shared by every layer
        self.drop6 = PaperDropout(cfg.dropout.p, cfg.dropout.style)
        self.drop7 = PaperDropout(cfg.dropout.p, cfg.dropout.style)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_to(x, "fc8")  # (N, num_classes) logits

    def forward_to(self, x: Tensor, layer: str) -> Tensor:
        """Run the network up to ``layer`` and return its activations.

        ``layer`` is one of ``FEATURE_LAYERS``: ``pool5`` flattened (N, 9216), ``fc6`` or
        ``fc7`` after their ReLU and before dropout (N, 4096), or ``fc8``, the logits.
        """
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"layer must be one of {', '.join(FEATURE_LAYERS)}, got {layer!r}")
        x = self.conv1(self.pad1(x))  # (N, 96, 55, 55)
        act_first = self.cfg.lrn.conv1_position == "after_relu"  # §3.3; before: the CC2 cfgs
        x = lrn_act_pool(self.lrn1, self.act, self.pool1, x, act_first)  # (N, 96, 27, 27)
        x = self.conv2(x)  # (N, 256, 27, 27)
        if self.cfg.lrn.same_map_norm:  # cuda-convnet2's cnorm2 between LRN2 and pool2
            x = self.pool2(self.norm2(relu_then_lrn(self.lrn2, self.act, x)))
        else:
            x = lrn_act_pool(self.lrn2, self.act, self.pool2, x, act_first=True)  # (N, 256, 13, 13)
        x = self.act(self.conv3(x))  # (N, 384, 13, 13)
        x = self.act(self.conv4(x))  # (N, 384, 13, 13)
        x = self.pool5(self.act(self.conv5(x)))  # (N, 256, 6, 6)
        if layer == "pool5":
            return torch.flatten(x, 1)  # (N, 9216), channel-major: tower A's 128 maps first
        if self.cfg.extra_conv6:
            x = self.act(self.conv6(x))  # (N, 256, 6, 6)
        x = torch.flatten(x, 1)  # (N, 9216)
        inputs = self.cfg.dropout.placement == "inputs"  # torchvision drops the fc inputs
        for name, fc, drop in (("fc6", self.fc6, self.drop6), ("fc7", self.fc7, self.drop7)):
            x = self.act(fc(drop(x) if inputs else x))  # (N, 4096)
            if layer == name:
                return x
            x = x if inputs else drop(x)
        return self.fc8(x)  # (N, num_classes) logits


def init_weights(model: nn.Module, cfg: InitConfig) -> None:
    """Initialise conv1..fc8 (and conv6) from the preset's table, then the per-layer overrides."""
    table = _kaiming_table(model) if cfg.preset == "kaiming" else INIT_PRESETS[cfg.preset]
    for name in ALL_LAYERS:
        layer = getattr(model, name, None)
        if layer is None:  # conv6 without model.extra_conv6
            continue
        std, bias = table.get(name, (None, None))
        std, bias = cfg.weight_std.get(name, std), cfg.bias.get(name, bias)
        if std is not None:
            nn.init.normal_(layer.weight, 0.0, std)
        if bias is not None:
            nn.init.constant_(layer.bias, bias)


def _kaiming_table(model: nn.Module) -> dict[str, tuple[float, float]]:
    """He et al. (2015): N(0, 2 / fan_in) for every layer a ReLU follows, fan_in counting only
    the maps a grouped kernel sees; fc8 keeps the paper's N(0, 0.01^2); every bias 0."""
    table = {}
    for name in ALL_LAYERS:
        layer = getattr(model, name, None)
        if layer is not None:
            fan_in = layer.weight[0].numel()
            table[name] = (math.sqrt(2.0 / fan_in), 0.0)
    table["fc8"] = (paper.INIT_WEIGHT_STD, 0.0)
    return table


def build_model(cfg: Any) -> AlexNet:
    """An initialised ``AlexNet`` from a ``ModelConfig`` or a whole ``Config`` (its ``model``)."""
    model_cfg: ModelConfig = getattr(cfg, "model", cfg)
    model = AlexNet(model_cfg)
    init_weights(model, model_cfg.init)
    return model
