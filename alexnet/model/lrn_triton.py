"""Fused Triton kernels for the LRN op (``lrn.py``) on CUDA tensors.

Each direction is one kernel that reads its inputs once from memory and writes its output once;
the neighbouring channels a window needs are re-read from the cache. A program handles
``BLOCK_POS`` positions x all channels of one group, computing in float32 whatever the dtype.
The backward recomputes the window sums from the input (nothing else was saved), including
those of the neighbouring channels its own window sum needs: ``2 n - 1`` shifted loads of x.

The tensor is seen as (rows, channels of one group, columns) with strides, so contiguous
(rows = N * groups, columns = H * W) and channels_last (rows = N, columns = H * W * groups)
inputs run without a copy. ``lrn.py`` imports this module only for CUDA tensors and falls back
to the portable path when Triton cannot be imported. Tests run these kernels on the CPU with
Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE = 4096  # elements per program in the forward (positions x padded channels)
MAX_CHANNELS = 1024  # wider groups use the portable path


def supports(x: Tensor, groups: int) -> bool:
    """Whether these kernels handle ``x``: float32/16 or bfloat16 (they compute in float32, so
    float64 takes the portable path), at most 1024 maps per group."""
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    return x.dtype in dtypes and x.shape[1] // groups <= MAX_CHANNELS


def forward(x: Tensor, p: Any) -> Tensor:
    """``lrn``'s forward (``p``: an ``LRNParams``); same layout and dtype as ``x``."""
    x = x.contiguous(memory_format=_memory_format(x))
    y = torch.empty_like(x)
    grid, meta = _launch(x, p, TILE)
    with _device_of(x):
        _forward_kernel[grid](x, y, *_geometry(x, p.groups), p.alpha, p.k, p.beta, **meta)
    return y


def backward(grad: Tensor, x: Tensor, p: Any) -> Tensor:
    """``lrn``'s gradient with respect to its input, recomputed from ``x``."""
    x = x.contiguous(memory_format=_memory_format(x))
    grad = grad.contiguous(memory_format=_memory_format(x))
    dx = torch.empty_like(x)
    grid, meta = _launch(x, p, TILE // 2)
    with _device_of(x):
        _backward_kernel[grid](grad, x, dx, *_geometry(x, p.groups), p.alpha, p.k, p.beta, **meta)
    return dx


def _device_of(x: Tensor) -> contextlib.AbstractContextManager:
    """Make ``x``'s GPU the current device: Triton launches there (towers on cuda:1, too).
    CPU tensors (Triton's interpreter, in tests) need nothing."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _memory_format(x: Tensor) -> torch.memory_format:
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _view(x: Tensor, groups: int) -> Tensor:
    """(rows, channels of one group, columns), a strided view of ``x``."""
    n, c, h, w = x.shape
    if _memory_format(x) == torch.channels_last:  # (n, h, w, c) in memory
        return x.permute(0, 2, 3, 1).reshape(n, h * w * groups, c // groups).transpose(1, 2)
    return x.view(n * groups, c // groups, h * w)


def _geometry(x: Tensor, groups: int) -> tuple[int, ...]:
    view = _view(x, groups)
    rows, channels, cols = view.shape
    return (cols, channels, *view.stride())


def _launch(x: Tensor, p: Any, tile: int) -> tuple[tuple[int, int], dict[str, Any]]:
    rows, channels, cols = _view(x, p.groups).shape
    block_c = triton.next_power_of_2(channels)
    block_pos = max(1, tile // block_c)
    meta = {
        "SIZE": p.size,
        "RELU": p.relu,
        "BETA_075": p.beta == 0.75,
        "BLOCK_POS": block_pos,
        "BLOCK_C": block_c,
        "num_warps": 8,  # 256 threads: 8 to 16 tile elements each
    }
    return (rows, triton.cdiv(cols, block_pos)), meta  # rows grow with the batch: axis 0


@triton.jit
def _load(ptr, offsets, chan, channels, pos_ok, RELU: tl.constexpr):
    """The activation at ``offsets`` (zero outside the group's channels), float32."""
    ok = pos_ok[:, None] & (chan[None, :] >= 0) & (chan[None, :] < channels)
    a = tl.load(ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    if RELU:
        a = tl.maximum(a, 0.0)
    return a


@triton.jit
def _scale(base, beta, BETA_075: tl.constexpr):
    """base^-beta; the paper's 0.75 as rsqrt(base) * sqrt(rsqrt(base))."""
    if BETA_075:
        r = tl.math.rsqrt(base)
        s = r * tl.sqrt(r)
    else:
        s = tl.exp2(-beta * tl.log2(base))
    return s


@triton.jit
def _forward_kernel(
    x_ptr,
    y_ptr,
    cols,
    channels,
    row_stride,
    chan_stride,
    col_stride,
    alpha,
    k,
    beta,
    SIZE: tl.constexpr,
    RELU: tl.constexpr,
    BETA_075: tl.constexpr,
    BLOCK_POS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pos = tl.program_id(1) * BLOCK_POS + tl.arange(0, BLOCK_POS)
    row = tl.program_id(0).to(tl.int64)
    chan = tl.arange(0, BLOCK_C)
    pos_ok = pos < cols
    at = row * row_stride + pos.to(tl.int64)[:, None] * col_stride  # (BLOCK_POS, 1)
    total = tl.zeros((BLOCK_POS, BLOCK_C), dtype=tl.float32)
    for d in tl.static_range(SIZE):  # the window: channels c - n//2 .. c + n//2
        c = chan + (d - SIZE // 2)
        a = _load(x_ptr, at + c[None, :] * chan_stride, c, channels, pos_ok, RELU)
        total += a * a
    a = _load(x_ptr, at + chan[None, :] * chan_stride, chan, channels, pos_ok, RELU)
    y = a * _scale(k + alpha * total, beta, BETA_075)
    ok = pos_ok[:, None] & (chan[None, :] < channels)
    tl.store(y_ptr + at + chan[None, :] * chan_stride, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(
    g_ptr,
    x_ptr,
    dx_ptr,
    cols,
    channels,
    row_stride,
    chan_stride,
    col_stride,
    alpha,
    k,
    beta,
    SIZE: tl.constexpr,
    RELU: tl.constexpr,
    BETA_075: tl.constexpr,
    BLOCK_POS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pos = tl.program_id(1) * BLOCK_POS + tl.arange(0, BLOCK_POS)
    row = tl.program_id(0).to(tl.int64)
    chan = tl.arange(0, BLOCK_C)
    pos_ok = pos < cols
    at = row * row_stride + pos.to(tl.int64)[:, None] * col_stride
    HALF: tl.constexpr = SIZE // 2
    window = tl.zeros((BLOCK_POS, BLOCK_C), dtype=tl.float32)  # sum of g a s / (k + alpha S)
    scale = tl.zeros((BLOCK_POS, BLOCK_C), dtype=tl.float32)
    for d in tl.static_range(SIZE):  # neighbour j = c + d - n//2, whose window holds c
        j = chan + (d - HALF)
        total = tl.zeros((BLOCK_POS, BLOCK_C), dtype=tl.float32)
        for e in tl.static_range(SIZE):  # S_j
            c = j + (e - HALF)
            a = _load(x_ptr, at + c[None, :] * chan_stride, c, channels, pos_ok, RELU)
            total += a * a
        a_j = _load(x_ptr, at + j[None, :] * chan_stride, j, channels, pos_ok, RELU)
        g_j = _load(g_ptr, at + j[None, :] * chan_stride, j, channels, pos_ok, False)
        base = k + alpha * total
        s_j = _scale(base, beta, BETA_075)
        window += g_j * a_j * s_j / base  # zero outside the group: a_j = g_j = 0 there
        if d == HALF:
            scale = s_j
    a = _load(x_ptr, at + chan[None, :] * chan_stride, chan, channels, pos_ok, RELU)
    g = _load(g_ptr, at + chan[None, :] * chan_stride, chan, channels, pos_ok, False)
    dx = g * scale - 2.0 * alpha * beta * a * window
    if RELU:  # ReLU's gradient: zero where the pre-activation was not positive
        dx = tl.where(a > 0.0, dx, 0.0)
    ok = pos_ok[:, None] & (chan[None, :] < channels)
    tl.store(dx_ptr + at + chan[None, :] * chan_stride, dx.to(dx_ptr.dtype.element_ty), mask=ok)
