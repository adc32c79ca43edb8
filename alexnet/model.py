"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) as one module with named layers.

The paper's two towers (§3.2) run on one device as grouped convolutions: ``groups=2`` in conv2,
conv4 and conv5, which see only their own tower's maps, while conv3 and the fully connected layers
see both (``alexnet.towers`` runs the same maths on two devices). The rest follows §3.1 (ReLU),
§3.3 (LRN, per tower), §3.4 (overlapping pooling), §3.5 (widths), §4.2 (dropout: no scaling in
training, x0.5 at test) and §5 (initialisation). Every alternative (Caffe, cuda-convnet2,
torchvision) is a named ``ModelConfig`` option; see ``faithful-spec.md`` sections 1-3 and 7.

``python -m alexnet.model [--config FILE] [--set KEY=VALUE ...]`` prints the layer table.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet import paper
from alexnet.config import LAYERS, InitConfig, LRNConfig, ModelConfig, input_size, load_config
from alexnet.errors import report_user_errors

# Conv widths per arch. one_tower: §3.2 footnote 2, half the kernels except in conv5.
# owt: torchvision / cuda-convnet2 layers-imagenet-1gpu.cfg ("one weird trick"), comparison only.
CONV_WIDTHS = {
    "two_tower": paper.CONV_WIDTHS,
    "one_tower": tuple(w // paper.TOWERS for w in paper.CONV_WIDTHS[:4]) + paper.CONV_WIDTHS[4:],
    "owt": (64, 192, 384, 256, 256),
}
POOL5_SIDE = 6  # [derived] 55 -> 27 -> 13 -> 6 with either pooling


def _init_table(std: dict[str, float], hidden_bias: float) -> dict[str, tuple[float, float]]:
    """layer: (weight std, bias); std 0.01 unless given, hidden_bias in §5's bias-1 layers."""
    return {
        n: (std.get(n, paper.INIT_WEIGHT_STD), hidden_bias if n in paper.BIAS_ONE_LAYERS else 0.0)
        for n in LAYERS
    }


# Initialisation presets (spec 3.1). pytorch_default keeps torch's own init.
INIT_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "paper": _init_table({}, hidden_bias=1.0),  # §5
    "caffe": _init_table({"fc6": 0.005, "fc7": 0.005}, hidden_bias=0.1),  # bvlc_alexnet
    # cuda-convnet2 layers-imagenet-2gpu-model.cfg initW; biases as the paper
    "cuda_convnet2": _init_table({"conv3": 0.03, "conv4": 0.03, "conv5": 0.03}, hidden_bias=1.0),
    "pytorch_default": {},
}


class PaperLRN(nn.Module):
    """Local response normalisation across channels (§3.3), run separately in each channel group.

    ``b_i = a_i / (k + alpha * S_i)^beta`` with ``S_i`` the sum of ``a_j^2`` over channels ``j`` in
    ``max(0, i - n//2) .. min(N - 1, i + n//2)`` of the same group. ``alpha_semantics="raw_sum"``
    is the paper's formula; ``"divided_by_n"`` uses ``alpha / n`` like torch, Caffe and
    cuda-convnet. ``groups=2`` keeps each tower's 48 / 128 maps to itself, as on two GPUs.
    """

    def __init__(
        self, size: int, alpha: float, beta: float, k: float, alpha_semantics: str = "raw_sum",
        groups: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        if alpha_semantics not in ("raw_sum", "divided_by_n"):
            raise ValueError(f"alpha_semantics: raw_sum or divided_by_n, got {alpha_semantics!r}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_semantics, self.groups = alpha_semantics, groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        alpha = self.alpha * self.size if self.alpha_semantics == "raw_sum" else self.alpha
        grouped = x.reshape(n * self.groups, c // self.groups, h, w)  # groups normalise apart
        y = F.local_response_norm(grouped, self.size, alpha, self.beta, self.k)  # torch: alpha/n
        return y.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha} ({self.alpha_semantics}), "
                f"beta={self.beta}, k={self.k}, groups={self.groups}")  # fmt: skip


def draw_dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A Bernoulli(1 - p) keep-mask of ``shape``, drawn on ``like``'s device and generator."""
    return like.new_empty(shape).bernoulli_(1 - p)  # as torch.empty_like(x).bernoulli_(1 - p)


class PaperDropout(nn.Module):
    """Dropout (§4.2). ``style="paper"``: training multiplies by the keep-mask, no rescaling, and
    evaluation multiplies by ``1 - p``. ``"inverted"``: training ``x * (mask / (1 - p))`` and
    evaluation is the identity: ``F.dropout``'s computation, with a mask the towers can share.
    """

    def __init__(self, p: float = paper.DROPOUT_P, style: str = "paper") -> None:
        super().__init__()
        if style not in ("paper", "inverted"):
            raise ValueError(f"dropout style must be paper or inverted, got {style!r}")
        self.p, self.style = p, style

    def apply_mask(self, x: Tensor, mask: Tensor) -> Tensor:
        """The training-mode output for a given keep-mask."""
        return x * mask if self.style == "paper" else x * (mask / (1 - self.p))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.p > 0:
            return self.apply_mask(x, draw_dropout_mask(x.shape, self.p, x))
        return x * (1 - self.p) if self.style == "paper" else x

    def extra_repr(self) -> str:
        return f"p={self.p}, style={self.style}"


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


def build_pool(kind: str) -> nn.MaxPool2d:
    """Overlapping 3/2 max-pooling (§3.4) or the non-overlapping 2/2 it is compared with."""
    size = paper.POOL_SIZE if kind == "overlapping" else paper.POOL_SIZE_NON_OVERLAPPING
    return nn.MaxPool2d(size, paper.POOL_STRIDE)


def build_lrn(cfg: LRNConfig, groups: int) -> nn.Module:
    """PaperLRN with the config's constants, or Identity when LRN is switched off."""
    if not cfg.enabled:
        return nn.Identity()
    return PaperLRN(cfg.size, cfg.alpha, cfg.beta, cfg.k, cfg.alpha_semantics, groups)


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
        self.lrn1 = build_lrn(cfg.lrn, lrn_groups)
        self.pool1 = build_pool(cfg.pooling)
        self.conv2 = nn.Conv2d(w1, w2, k2, padding=p2, groups=g["conv2"])
        self.lrn2 = build_lrn(cfg.lrn, lrn_groups)
        self.pool2 = build_pool(cfg.pooling)
        self.conv3 = nn.Conv2d(w2, w3, k3, padding=p3, groups=g["conv3"])
        self.conv4 = nn.Conv2d(w3, w4, k4, padding=p4, groups=g["conv4"])
        self.conv5 = nn.Conv2d(w4, w5, k5, padding=p5, groups=g["conv5"])
        self.pool5 = build_pool(cfg.pooling)
        self.fc6 = nn.Linear(w5 * POOL5_SIDE**2, paper.FC_WIDTHS[0])
        self.fc7 = nn.Linear(paper.FC_WIDTHS[0], paper.FC_WIDTHS[1])
        self.fc8 = nn.Linear(paper.FC_WIDTHS[1], cfg.num_classes)
        self.act = build_activation(cfg.activation)  # parameter-free, shared by every layer
        self.drop6 = PaperDropout(cfg.dropout.p, cfg.dropout.style)
        self.drop7 = PaperDropout(cfg.dropout.p, cfg.dropout.style)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.pad1(x))  # (N, 96, 55, 55)
        if self.cfg.lrn.conv1_position == "after_relu":  # §3.3; before_relu: the CC2 cfgs
            x = self.pool1(self.lrn1(self.act(x)))  # (N, 96, 27, 27)
        else:
            x = self.pool1(self.act(self.lrn1(x)))
        x = self.pool2(self.lrn2(self.act(self.conv2(x))))  # (N, 256, 13, 13)
        x = self.act(self.conv3(x))  # (N, 384, 13, 13)
        x = self.act(self.conv4(x))  # (N, 384, 13, 13)
        x = self.pool5(self.act(self.conv5(x)))  # (N, 256, 6, 6)
        x = torch.flatten(x, 1)  # (N, 9216), channel-major: tower A's 128 maps first
        inputs = self.cfg.dropout.placement == "inputs"  # torchvision drops the fc inputs
        for fc, drop in ((self.fc6, self.drop6), (self.fc7, self.drop7)):
            x = self.act(fc(drop(x))) if inputs else drop(self.act(fc(x)))  # (N, 4096)
        return self.fc8(x)  # (N, num_classes) logits


def init_weights(model: nn.Module, cfg: InitConfig) -> None:
    """Initialise conv1..fc8 from the preset's table, then apply the per-layer overrides."""
    table = INIT_PRESETS[cfg.preset]
    for name in LAYERS:
        layer = getattr(model, name)
        std, bias = table.get(name, (None, None))
        std, bias = cfg.weight_std.get(name, std), cfg.bias.get(name, bias)
        if std is not None:
            nn.init.normal_(layer.weight, 0.0, std)
        if bias is not None:
            nn.init.constant_(layer.bias, bias)


def build_model(cfg: Any) -> AlexNet:
    """An initialised ``AlexNet`` from a ``ModelConfig`` or a whole ``Config`` (its ``model``)."""
    model_cfg: ModelConfig = getattr(cfg, "model", cfg)
    model = AlexNet(model_cfg)
    init_weights(model, model_cfg.init)
    return model


# --- summary ------------------------------------------------------------------------------------


class SummaryRow(NamedTuple):
    name: str
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int
    macs: int  # multiply-adds per image


def _record(rows: list[SummaryRow], name: str, module: nn.Module, _: Any, out: Tensor) -> None:
    macs = 0
    if isinstance(module, nn.Conv2d):  # each output element: in/groups x kh x kw products
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        macs = out[0].numel() * per_output
    elif isinstance(module, nn.Linear):
        macs = module.in_features * module.out_features
    params = sum(p.numel() for p in module.parameters())
    rows.append(SummaryRow(name, tuple(out.shape[1:]), params, macs))


def summarize(model: nn.Module, input_size: int) -> list[SummaryRow]:
    """One row per conv, LRN, pooling and fc layer, in execution order, from a real forward pass."""
    rows: list[SummaryRow] = []
    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, PaperLRN)
    handles = [
        m.register_forward_hook(functools.partial(_record, rows, n))
        for n, m in model.named_children()
        if isinstance(m, kinds)
    ]
    was_training = model.training
    try:
        model.eval()  # no dropout draws, so the caller's random stream is untouched
        with torch.no_grad():
            model(next(model.parameters()).new_zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def format_summary(rows: list[SummaryRow], total_params: int, size: int) -> str:
    """The rows as an aligned text table, with totals."""
    table = [("layer", "output", "params", "mult-adds"), ("input", f"3x{size}x{size}", "", "")]
    for r in rows:
        table.append((r.name, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}"))
    table.append(("total", "", f"{total_params:,}", f"{sum(r.macs for r in rows):,}"))
    w = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}".rstrip() for a, b, c, d in table]
    rule = "-" * max(map(len, lines))
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def main(argv: list[str] | None = None) -> int:
    """Print the layer table (output shape, parameters, multiply-adds per image) for a config."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet.model",
        description="Print AlexNet's layers with output shapes, parameters and multiply-adds\n"
        "per image, measured by a forward pass of the configured model.",
        epilog="examples:\n  python -m alexnet.model\n"
        "  python -m alexnet.model --config configs/ilsvrc2012.yaml --set model.arch=owt\n"
        "  python -m alexnet.model --set model.conv1_geometry=crop227_valid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML config (default: the paper's settings)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. model.lrn.k=1 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides).model
        model, size = build_model(cfg), input_size(cfg)
        params = sum(p.numel() for p in model.parameters())
        print(f"AlexNet: arch {cfg.arch}, conv1 {cfg.conv1_geometry}, {cfg.num_classes} classes")
        print(format_summary(summarize(model, size), params, size))
        return 0

    return report_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
