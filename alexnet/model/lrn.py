"""Local response normalisation (§3.3) as a ``torch.library`` custom op with its own backward.

    b_i = a_i * s_i,   s_i = (k + alpha * S_i)^-beta,   S_i = sum of a_j^2 over the n maps j
                                                             around i in the same group

The backward is the closed form (the window is symmetric, so one more window sum gives it):

    dL/da_i = g_i s_i - 2 alpha beta a_i * (sum over the window of g_j a_j s_j / (k + alpha S_j))

Two ops, ``alexnet::lrn`` and ``alexnet::lrn_backward``, each with a fake implementation and tied
together by ``register_autograd``: ``torch.compile(fullgraph=True)`` sees one opaque node, not a
graph break. Only the input is saved; the backward recomputes S (on the GPU: one read of the
input and the gradient, one write of the result). ``relu=True`` takes the pre-activation and
applies the paper's ReLU first, inside the same passes. Half-precision inputs are computed in
float32 and returned in their own dtype; channels_last inputs stay channels_last.

CUDA tensors go to the Triton kernels of ``lrn_triton`` when Triton is installed; everything else
to the portable path of ``lrn_portable`` (plain tensor operations, block by block).
``reference_lrn`` is the former ``F.local_response_norm`` implementation in plain ATen ops: the
exported program writes the op out with it (``inference.deploy``), and the tests and
``python -m alexnet.bench lrn`` compare the op with it.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from alexnet.model.lrn_portable import (
    LRNParams,
    memory_format,
    portable_backward,
    portable_forward,
)

__all__ = ["LRNParams", "lrn", "portable_backward", "portable_forward", "reference_lrn"]


def lrn(
    x: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int = 1,
    relu: bool = False,
) -> Tensor:
    """``b = a / (k + alpha * sum of a^2 over n maps)^beta`` over the channels of each group.

    Args:
        x: (N, C, H, W), C divisible by ``groups``; any float dtype, contiguous or channels_last.
        size: n, the window width in maps (odd).
        alpha: the coefficient of the raw sum of squares (pass ``alpha / n`` for Caffe's form).
        beta, k: the exponent and the additive constant.
        groups: channel groups normalised separately (windows never cross a group boundary).
        relu: apply ReLU to ``x`` first (``lrn(x, relu=True) == lrn(relu(x))``), fused.
    """
    if x.dim() != 4 or x.shape[1] % groups:
        raise ValueError(f"lrn: need (N, C, H, W) with C divisible by {groups}, got {x.shape}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"lrn: size must be a positive odd number, got {size}")
    return torch.ops.alexnet.lrn(x, size, float(alpha), float(beta), float(k), groups, relu)


def reference_lrn(
    x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1
) -> Tensor:
    """The former implementation (``F.local_response_norm`` per group); ``alpha`` as in ``lrn``."""
    n, c, h, w = x.shape
    grouped = x.reshape(n * groups, c // groups, h, w)
    return F.local_response_norm(grouped, size, alpha * size, beta, k).reshape(n, c, h, w)


# --- the ops -------------------------------------------------------------------------------------


@torch.library.custom_op("alexnet::lrn", mutates_args=())
def _lrn_op(
    x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
) -> Tensor:
    p = LRNParams(size, alpha, beta, k, groups, relu)
    kernels = _triton(x, groups)
    return kernels.forward(x, p) if kernels else portable_forward(x, p)


@_lrn_op.register_fake
def _(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))  # the layout the kernels write


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def _lrn_backward_op(
    grad: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
) -> Tensor:
    p = LRNParams(size, alpha, beta, k, groups, relu)
    kernels = _triton(x, groups)
    return kernels.backward(grad, x, p) if kernels else portable_backward(grad, x, p)


@_lrn_backward_op.register_fake
def _(
    grad: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:  # noqa: ANN001
    ctx.save_for_backward(inputs[0])
    ctx.params = inputs[1:]


def _backward(ctx, grad: Tensor) -> tuple:  # noqa: ANN001
    (x,) = ctx.saved_tensors
    return (_lrn_backward_op(grad, x, *ctx.params), None, None, None, None, None, None)


_lrn_op.register_autograd(_backward, setup_context=_setup_context)


def _triton(x: Tensor, groups: int) -> ModuleType | None:
    """``lrn_triton`` for a CUDA tensor it supports when Triton imports, else None (portable)."""
    if not x.is_cuda:
        return None
    try:
        from alexnet.model import lrn_triton
    except ImportError:  # a torch build without Triton
        return None
    return lrn_triton if lrn_triton.supports(x, groups) else None
