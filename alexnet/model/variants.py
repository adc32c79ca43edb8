"""Layers only the comparison variants use (not in the paper; see ``configs/variants/``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from alexnet import paper


class SameMapNorm(nn.Module):
    """cuda-convnet2's ``rnorm`` layer (``cnorm2`` after LRN2 in its 2-GPU config).

    Each activation is divided by the squares of its ``size`` x ``size`` neighbourhood in the
    *same* map: ``b = a / (min_div + scale / size^2 * S)^pow``, ``S`` the sum of ``a^2`` over the
    window centred on it, clipped at the image border (zeros outside). A mean of squares with
    zero padding is exactly ``S / size^2``, so the layer is one ``avg_pool2d``.
    """

    def __init__(
        self,
        size: int = paper.CC2_SAME_MAP_SIZE,
        scale: float = paper.CC2_SAME_MAP_SCALE,
        power: float = paper.CC2_SAME_MAP_POW,
        min_div: float = paper.CC2_SAME_MAP_MIN_DIV,
    ) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"SameMapNorm size must be a positive odd number, got {size}")
        self.size, self.scale, self.power, self.min_div = size, scale, power, min_div

    def forward(self, x: Tensor) -> Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, 1, self.size // 2, count_include_pad=True)
        return x / (self.min_div + self.scale * mean_sq).pow(self.power)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, pow={self.power}, min_div={self.min_div}"
