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

The portable path (CPU, and CUDA without Triton) walks the tensor in blocks of ``BLOCK``
elements, so its dozen elementwise passes in each direction run on data held in the cache; the
window sum over channels is ``n - 1`` additions of shifted slices of a zero-padded buffer.
CUDA tensors go to the Triton kernels of ``lrn_triton`` when Triton is installed.
``reference_lrn`` is the former ``F.local_response_norm`` implementation, kept for tests and
``python -m alexnet.bench lrn``.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = (1 << 15) - 1  # elements per block of the portable path: under torch's grain size
# (32768), so every op on a block runs on one core, its buffers in that core's cache


class LRNParams(NamedTuple):
    size: int  # n, odd: the window is i - n//2 .. i + n//2
    alpha: float  # multiplies the raw sum of squares (the paper's alpha)
    beta: float
    k: float
    groups: int  # channel groups normalised apart (2 = the paper's towers)
    relu: bool  # the input is the pre-activation: ReLU first


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
    return torch.empty_like(x, memory_format=_memory_format(x))  # the layout the kernels write


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
    return torch.empty_like(x, memory_format=_memory_format(x))


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


# --- the portable path ---------------------------------------------------------------------------


def portable_forward(x: Tensor, p: LRNParams) -> Tensor:
    """The op's forward with plain tensor operations, block by block."""
    x = _supported_layout(x)
    y = torch.empty_like(x)
    _each_block(_forward_block, p, x, y)
    return y


def portable_backward(grad: Tensor, x: Tensor, p: LRNParams) -> Tensor:
    """The closed-form gradient with respect to the op's input, block by block."""
    x = _supported_layout(x)
    grad = grad.contiguous(memory_format=_memory_format(x))
    dx = torch.empty_like(x)
    _each_block(_backward_block, p, x, grad, dx)
    return dx


def _forward_block(buf: _Buffers, p: LRNParams, x: Tensor, y: Tensor) -> None:
    a = _activation(x, buf, p.relu)
    scale = _scale(_base(a, buf, p), p.beta, buf)
    torch.mul(a, scale, out=y)


def _backward_block(buf: _Buffers, p: LRNParams, x: Tensor, g: Tensor, dx: Tensor) -> None:
    a = _activation(x, buf, p.relu)
    base = _base(a, buf, p)  # k + alpha S
    scale = _scale(base, p.beta, buf)
    t = torch.mul(g, a, out=buf.inner)  # g a s / (k + alpha S), into the padded buffer
    t.mul_(scale).div_(base)
    window = _window_sum(buf.padded, p.size, out=base)
    out = dx if dx.dtype == buf.dtype else scale  # bf16: computed in float32, then rounded
    torch.mul(g, scale, out=out).addcmul_(a, window, value=-2 * p.alpha * p.beta)
    if p.relu:  # ReLU's own backward (where(a > 0, out, 0), 5x faster than torch.where)
        torch.ops.aten.threshold_backward.grad_input(out, a, 0, grad_input=out)
    if out is not dx:
        dx.copy_(out)


def _each_block(work: Callable[..., None], p: LRNParams, x: Tensor, *others: Tensor) -> None:
    """``work(buffers, p, *blocks)`` for every block of ``x`` and ``others``.

    Blocks are smaller than torch's grain size, so each op runs on one core without waking
    the others; on several cores (``torch.get_num_threads()``) as many threads take blocks in
    turn. No thread waits for another until the end, so a busy machine costs no more than
    the cores it takes away.
    """
    views = [_channel_view(t, p.groups) for t in (x, *others)]
    if x.device.type == "cpu":
        blocks = list(_blocks(views))  # the first is the largest
        threads = min(torch.get_num_threads(), len(blocks))
    else:  # e.g. float64 on a GPU: whole-tensor ops, in the caller's thread and CUDA stream
        blocks, threads = [tuple(views)], 1
    next_block = itertools.count().__next__  # atomic under the GIL

    @torch.inference_mode()  # helper threads do not inherit the caller's autograd state
    def worker() -> None:
        buffers = _Buffers(blocks[0][0], p, _compute_dtype(x))
        while (i := next_block()) < len(blocks):
            work(buffers.fit(blocks[i][0]), p, *blocks[i])

    helpers = [_pool(threads - 1, os.getpid()).submit(worker) for _ in range(threads - 1)]
    worker()  # the calling thread takes blocks too
    for helper in helpers:
        helper.result()


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """Helper threads, created at first use (per process: a fork has none of its parent's)."""
    return ThreadPoolExecutor(max(threads, 1), thread_name_prefix=f"alexnet-lrn-{pid}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays


def _memory_format(x: Tensor) -> torch.memory_format:
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _supported_layout(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=_memory_format(x))


def _channel_view(t: Tensor, groups: int) -> Tensor:
    """``t`` as (rows, channels of one group, columns): windows run along dim 1. A view."""
    n, c, h, w = t.shape
    if _memory_format(t) == torch.channels_last:  # (n, h, w, c) in memory
        return t.permute(0, 2, 3, 1).reshape(n * h * w * groups, c // groups, 1)
    return t.view(n * groups, c // groups, h * w)


def _blocks(views: list[Tensor]) -> Iterator[tuple[Tensor, ...]]:
    """Matching blocks of about ``BLOCK`` elements of same-shape channel views."""
    rows, chans, cols = views[0].shape
    width = min(cols, max(1, BLOCK // chans))
    height = max(1, BLOCK // (chans * width))
    for i in range(0, rows, height):
        for j in range(0, cols, width):
            yield tuple(v[i : i + height, :, j : j + width] for v in views)


class _Buffers:
    """One thread's scratch space for blocks up to ``largest``'s shape, in the compute dtype
    (float32, or float64 for float64 inputs); ``fit`` views it at one block's shape."""

    def __init__(self, largest: Tensor, p: LRNParams, dtype: torch.dtype) -> None:
        rows, self.channels, cols = largest.shape
        self.half = p.size // 2
        shape = (rows, self.channels, cols)
        self._padded = largest.new_zeros((rows, self.channels + 2 * self.half, cols), dtype=dtype)
        self._a, self._base, self._scale = (largest.new_empty(shape, dtype=dtype) for _ in "abs")
        self.dtype = dtype
        self.k = largest.new_tensor(p.k, dtype=dtype)  # 0-dim, for k + alpha S in one op

    def fit(self, block: Tensor) -> _Buffers:
        rows, _, cols = block.shape
        self.padded = self._padded[:rows, :, :cols]  # zero edges: channels -n//2.. and C..C+n//2
        self.inner = self.padded.narrow(1, self.half, self.channels)
        whole = (self._a, self._base, self._scale)
        self.a, self.base, self.scale = (t[:rows, :, :cols] for t in whole)
        return self


def _activation(x: Tensor, buf: _Buffers, relu: bool) -> Tensor:
    """The LRN's input a in the compute dtype: ReLU(x) when fused, else x (upcast if needed)."""
    if x.dtype != buf.dtype:
        a = buf.a.copy_(x)
        return a.clamp_min_(0) if relu else a
    return torch.clamp_min(x, 0, out=buf.a) if relu else x


def _base(a: Tensor, buf: _Buffers, p: LRNParams) -> Tensor:
    """k + alpha * S, into ``buf.base``."""
    torch.mul(a, a, out=buf.inner)
    total = _window_sum(buf.padded, p.size, out=buf.base)
    return torch.add(buf.k, total, alpha=p.alpha, out=total)


def _window_sum(padded: Tensor, size: int, out: Tensor) -> Tensor:
    """Sum over ``size`` neighbouring channels: shifted slices of a zero-padded buffer."""
    length = out.shape[1]
    if size == 1:
        return out.copy_(padded)
    torch.add(padded.narrow(1, 0, length), padded.narrow(1, 1, length), out=out)
    for shift in range(2, size):
        out.add_(padded.narrow(1, shift, length))
    return out


def _scale(base: Tensor, beta: float, buf: _Buffers) -> Tensor:
    """base^-beta into ``buf.scale``; the paper's 0.75 by square roots, 3x cheaper than pow."""
    if beta != 0.75:
        return torch.pow(base, -beta, out=buf.scale)
    inv_sqrt = torch.rsqrt(base, out=buf.scale)  # base^-1/2
    return inv_sqrt.div_(torch.rsqrt(inv_sqrt, out=buf.inner))  # / base^1/4; inner is free
