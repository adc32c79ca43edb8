"""ReLU, LRN and the overlapping max-pool as one op, ``alexnet::lrn_pool`` (§3.3, §3.4).

    y = maxpool(f(x)),  f(x) = lrn(relu(x))   relu="input": the paper's ReLU, then LRN
                               relu(lrn(x))   relu="output": CC2's conv1 (the window sums raw x;
                                              relu(lrn(x)) = lrn(x) where x > 0, else 0)
                               lrn(x)         relu="none"

On CUDA tensors (float32/16, bfloat16) it is one Triton kernel each way (``lrn_pool_triton``):
the LRN's full-size output never reaches memory. The forward reads x and writes the pooled maps
and their argmax; the backward reads x, the pooled gradient and the argmax and writes dx,
recomputing the LRN from x. Elsewhere (the CPU, float64, no Triton) the portable path is the
composition it replaces: ``lrn_portable``'s LRN, then ``max_pool2d_with_indices``, and their
backwards. Both paths break ties as torch's max-pool does (the first maximum in row-major
window order), so they send gradients to the same positions.

Saved for the backward: x and the pool's argmax, in each path's own encoding. The kernels keep
int8 window offsets (``dh * pool + dw``) of the pooled size: recomputing the argmax instead would
need, for each of the up to four windows a position lies in, all nine LRN values of that window;
the int8 tensor costs two bytes per pooled element (~7 % over the traffic floor of LRN1 in bf16)
and makes the backward a gather. The portable path keeps ``max_pool2d``'s own int64 indices, as
the composition always did (a conversion would cost the CPU time for nothing). Half-precision
inputs are computed in float32 and pooled in their own dtype (the LRN output is rounded before
the comparison, as the composition does); channels_last stays channels_last.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from alexnet.model import lrn_portable
from alexnet.model.lrn_portable import LRNParams, memory_format

RELU_MODES = ("none", "input", "output")


class LRNPoolParams(NamedTuple):
    """The op's constants (the arguments of ``lrn_pool`` after the tensor)."""

    size: int
    alpha: float  # multiplies the raw sum of squares
    beta: float
    k: float
    groups: int
    relu: str  # RELU_MODES
    pool: int  # the max-pool's window side
    stride: int

    def lrn(self) -> LRNParams:
        """The LRN's constants; its ReLU fused in front for ``relu="input"``."""
        relu_first = self.relu == "input"
        return LRNParams(self.size, self.alpha, self.beta, self.k, self.groups, relu_first)


def lrn_pool(
    x: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int = 1,
    relu: str = "input",
    pool: int = 3,
    stride: int = 2,
) -> Tensor:
    """``max_pool2d(f(x), pool, stride)`` with the LRN ``f`` of ``lrn.lrn`` and ``relu`` placed
    as ``RELU_MODES`` say; no padding, windows inside the maps (floor mode)."""
    if x.dim() != 4 or x.shape[1] % groups:
        raise ValueError(f"lrn_pool: need (N, C, H, W) with C divisible by {groups}, got {x.shape}")
    if size < 1 or size % 2 == 0 or relu not in RELU_MODES:
        raise ValueError(f"lrn_pool: odd size and relu in {RELU_MODES}, got {size}, {relu!r}")
    if not 0 < stride <= pool <= min(x.shape[2:]) or pool * pool > 127:
        raise ValueError(f"lrn_pool: need stride <= pool <= the maps, got {pool}/{stride}")
    args = (size, float(alpha), float(beta), float(k), groups, relu, pool, stride)
    return torch.ops.alexnet.lrn_pool(x, *args)[0]


def pooled_shape(x: Tensor, pool: int, stride: int) -> tuple[int, ...]:
    n, c, h, w = x.shape
    return (n, c, (h - pool) // stride + 1, (w - pool) // stride + 1)


# --- the portable path ---------------------------------------------------------------------------


def portable_forward(x: Tensor, p: LRNPoolParams) -> tuple[Tensor, Tensor]:
    """The composition: the portable LRN, the ReLU after it if asked, ``max_pool2d`` (its
    int64 indices, ``h * W + w`` in each map, are the argmax)."""
    y = lrn_portable.portable_forward(x, p.lrn())
    if p.relu == "output":
        y = y.clamp_min_(0)
    return torch.ops.aten.max_pool2d_with_indices(y, [p.pool] * 2, [p.stride] * 2)


def portable_backward(grad: Tensor, x: Tensor, index: Tensor, p: LRNPoolParams) -> Tensor:
    """The composition's gradient: ``max_pool2d``'s backward (in float32 at least), the ReLU's
    if after the LRN, then the portable LRN's closed form."""
    compute = torch.promote_types(x.dtype, torch.float32)
    # max-pool's backward reads only its input's shape, layout and dtype (a new one would cost
    # the CPU a zeroed allocation's page faults)
    like = x if x.dtype == compute else torch.empty_like(x, dtype=compute)
    g = torch.ops.aten.max_pool2d_with_indices_backward(
        grad.to(compute), like, [p.pool] * 2, [p.stride] * 2, [0, 0], [1, 1], False, index
    )
    if p.relu == "output":  # relu(lrn(x)) > 0 exactly where x > 0
        g = torch.where(x > 0, g, 0.0)
    return lrn_portable.portable_backward(g, x, p.lrn())


# --- the ops -------------------------------------------------------------------------------------


@torch.library.custom_op("alexnet::lrn_pool", mutates_args=())
def _lrn_pool_op(
    x: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
    relu: str,
    pool: int,
    stride: int,
) -> tuple[Tensor, Tensor]:
    p = LRNPoolParams(size, alpha, beta, k, groups, relu, pool, stride)
    kernels = _triton(x, groups)
    return kernels.forward(x, p) if kernels else portable_forward(x, p)


@_lrn_pool_op.register_fake
def _(
    x: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
    relu: str,
    pool: int,
    stride: int,
) -> tuple[Tensor, Tensor]:
    shape, fmt = pooled_shape(x, pool, stride), memory_format(x)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    index = torch.int8 if _triton(x, groups) else torch.int64  # offsets, or max_pool2d's
    return y, torch.empty(shape, dtype=index, device=x.device, memory_format=fmt)


@torch.library.custom_op("alexnet::lrn_pool_backward", mutates_args=())
def _lrn_pool_backward_op(
    grad: Tensor,
    x: Tensor,
    argmax: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
    relu: str,
    pool: int,
    stride: int,
) -> Tensor:
    p = LRNPoolParams(size, alpha, beta, k, groups, relu, pool, stride)
    kernels = _triton(x, groups)
    if kernels:
        return kernels.backward(grad, x, argmax, p)
    return portable_backward(grad, x, argmax, p)


@_lrn_pool_backward_op.register_fake
def _(
    grad: Tensor,
    x: Tensor,
    argmax: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
    relu: str,
    pool: int,
    stride: int,
) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:  # noqa: ANN001
    ctx.save_for_backward(inputs[0], output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the argmax
    ctx.params = inputs[1:]


def _backward(ctx, grad: Tensor | None, _: Tensor | None) -> tuple:  # noqa: ANN001
    x, argmax = ctx.saved_tensors
    if grad is None:  # the pooled maps did not reach the loss
        return (None,) * (1 + len(ctx.params))
    return (_lrn_pool_backward_op(grad, x, argmax, *ctx.params), *[None] * len(ctx.params))


_lrn_pool_op.register_autograd(_backward, setup_context=_setup_context)


def _triton(x: Tensor, groups: int) -> ModuleType | None:
    """``lrn_pool_triton`` for a CUDA tensor it supports when Triton imports, else None."""
    if not x.is_cuda:
        return None
    try:
        from alexnet.model import lrn_pool_triton
    except ImportError:  # a torch build without Triton
        return None
    return lrn_pool_triton if lrn_pool_triton.supports(x, groups) else None
