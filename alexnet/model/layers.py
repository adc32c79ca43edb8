"""The paper's two special layers: local response normalisation (§3.3) and dropout (§4.2)."""

from __future__ import annotations

from torch import Tensor, nn

from alexnet import paper
from alexnet.model.lrn import lrn
from alexnet.model.lrn_pool import lrn_pool


class PaperLRN(nn.Module):
    """Local response normalisation across channels (§3.3), run separately in each channel group.

    ``b_i = a_i / (k + alpha * S_i)^beta`` with ``S_i`` the sum of ``a_j^2`` over channels ``j`` in
    ``max(0, i - n//2) .. min(N - 1, i + n//2)`` of the same group. ``alpha_semantics="raw_sum"``
    is the paper's formula; ``"divided_by_n"`` uses ``alpha / n`` like torch, Caffe and
    cuda-convnet. ``groups=2`` keeps each tower's 48 / 128 maps to itself, as on two GPUs.
    ``relu=True`` takes the pre-activation and applies the ReLU in front of the LRN itself
    (``a = max(x, 0)``), fused into the same op (``alexnet.model.lrn``) for speed.
    """

    def __init__(
        self,
        size: int,
        alpha: float,
        beta: float,
        k: float,
        alpha_semantics: str = "raw_sum",
        groups: int = 1,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if alpha_semantics not in ("raw_sum", "divided_by_n"):
            raise ValueError(f"alpha_semantics: raw_sum or divided_by_n, got {alpha_semantics!r}")
        if size < 1 or size % 2 == 0:
            raise ValueError(f"size: must be a positive odd number, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_semantics, self.groups, self.relu = alpha_semantics, groups, relu

    @property
    def raw_alpha(self) -> float:
        """The coefficient of the raw sum of squares (``alpha / n`` for ``divided_by_n``)."""
        return self.alpha if self.alpha_semantics == "raw_sum" else self.alpha / self.size

    def forward(self, x: Tensor) -> Tensor:
        return lrn(x, self.size, self.raw_alpha, self.beta, self.k, self.groups, self.relu)

    def pooled(self, x: Tensor, relu: str, pool: int, stride: int) -> Tensor:
        """``max_pool2d(f(x), pool, stride)`` as one op (``alexnet.model.lrn_pool``), ``f`` this
        LRN with a ReLU before it (``relu="input"``, as ``self.relu``) or after (``"output"``)."""
        args = (self.size, self.raw_alpha, self.beta, self.k, self.groups)
        return lrn_pool(x, *args, relu=relu, pool=pool, stride=stride)

    def extra_repr(self) -> str:
        relu = ", relu fused in front" if self.relu else ""
        return (
            f"size={self.size}, alpha={self.alpha} ({self.alpha_semantics}), "
            f"beta={self.beta}, k={self.k}, groups={self.groups}{relu}"
        )


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
