"""The ``model`` section: the network of §3 and every named alternative to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alexnet import paper
from alexnet.config.checks import positive, suggest

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# Every learned layer a config may name: the paper's eight and the optional conv6 (§6, 1 CNN*).
ALL_LAYERS = (*LAYERS[:5], "conv6", *LAYERS[5:])
frozen = dataclass(frozen=True, kw_only=True)


@frozen
class LRNConfig:
    """Local response normalisation (§3.3). Defaults are the paper's formula as written."""

    enabled: bool = True
    k: float = paper.LRN_K
    size: int = paper.LRN_SIZE
    alpha: float = paper.LRN_ALPHA
    beta: float = paper.LRN_BETA
    # raw_sum: alpha multiplies the sum of squares (paper); divided_by_n: alpha/n (CC2, Caffe,
    # torch).
    alpha_semantics: Literal["raw_sum", "divided_by_n"] = "raw_sum"
    per_tower: bool = True  # §3.2: each tower normalises its own 48 / 128 maps; False = Caffe
    conv1_position: Literal["after_relu", "before_relu"] = "after_relu"  # before: CC2 cfgs
    # cuda-convnet2's 2-GPU cfg adds a same-map 5x5 response normalisation (cnorm2) after LRN2;
    # not in the paper (paper.CC2_SAME_MAP_*)
    same_map_norm: bool = False

    def problems(self) -> list[str]:
        out = positive(self, "k", "alpha", "beta")
        if self.size < 1 or self.size % 2 == 0:
            out.append(f"size: must be a positive odd number, got {self.size}")
        return out


@frozen
class DropoutConfig:
    """Dropout on fc6 and fc7 (§4.2)."""

    p: float = paper.DROPOUT_P
    style: Literal["paper", "inverted"] = "paper"  # paper: no train scaling, x(1-p) at test
    placement: Literal["outputs", "inputs"] = "outputs"  # inputs = torchvision's placement

    def problems(self) -> list[str]:
        return [] if 0.0 <= self.p < 1.0 else [f"p: must be in [0, 1), got {self.p}"]


@frozen
class InitConfig:
    """Initialisation (§5): N(0, 0.01^2) weights, bias 1 in conv2/4/5, fc6/7, 0 elsewhere."""

    # kaiming: He et al. 2015 (std sqrt(2 / fan_in), biases 0), fc8 as the paper; not the paper's
    preset: Literal["paper", "caffe", "cuda_convnet2", "pytorch_default", "kaiming"] = "paper"
    weight_std: dict[str, float] = field(default_factory=dict)  # per-layer overrides
    bias: dict[str, float] = field(default_factory=dict)  # per-layer overrides

    def problems(self) -> list[str]:
        out = []
        for name, table in (("weight_std", self.weight_std), ("bias", self.bias)):
            for layer in table:
                if layer not in ALL_LAYERS:
                    out.append(f"{name}.{layer}: unknown layer{suggest(layer, ALL_LAYERS)}")
        out += [
            f"weight_std.{k}: must be > 0, got {v}" for k, v in self.weight_std.items() if v <= 0
        ]
        return out


@frozen
class ModelConfig:
    """The network (§3). ``arch``: two_tower = the paper; one_tower = §3.2's half-kernel
    comparison net; owt = torchvision's "one weird trick" widths, for comparison only."""

    arch: Literal["two_tower", "one_tower", "owt"] = "two_tower"
    num_classes: int = paper.NUM_CLASSES
    activation: Literal["relu", "tanh"] = "relu"  # §3.1 ablation
    # cc_ceil: 224 input, 55x55 by the author's ceiling rule; crop227_valid: Caffe; pad2_224: tv
    conv1_geometry: Literal["cc_ceil", "crop227_valid", "pad2_224"] = "cc_ceil"
    pooling: Literal["overlapping", "non_overlapping"] = "overlapping"  # §3.4 ablation
    lrn: LRNConfig = field(default_factory=LRNConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    init: InitConfig = field(default_factory=InitConfig)
    # §6 "1 CNN*": an extra sixth conv layer over the last pooling layer. The paper gives no
    # shape; ours: 3x3, pad 1, as many maps as conv5, tower-local like conv4/5, ReLU, bias 1.
    extra_conv6: bool = False

    def problems(self) -> list[str]:
        return (
            [] if self.num_classes >= 2 else [f"num_classes: must be >= 2, got {self.num_classes}"]
        )


def input_size(model: ModelConfig) -> int:
    """Side of the square network input implied by the conv1 geometry (224, or 227 for Caffe's)."""
    return 227 if model.conv1_geometry == "crop227_valid" else paper.INPUT_SIZE
