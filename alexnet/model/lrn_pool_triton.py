"""Triton kernels for the fused ReLU + LRN + max-pool op (``lrn_pool.py``) on CUDA tensors.

One kernel each way; each reads its inputs from memory once and writes its outputs once, the
neighbouring channels and overlapping windows coming from the cache. A program handles
``BLOCK_P`` positions x all channels of one group of one image, in float32 whatever the dtype.

- Forward: per pooled position, the LRN output of each of the window's ``pool^2`` inputs (each
  from ``size`` channel-shifted loads of x), rounded to the output dtype as the unfused
  composition rounds it, then the maximum and its window offset (int8) with torch's tie rule:
  a later element replaces the maximum only if it is larger, or NaN.
- Backward: per input position, the pooled gradient it received (the windows whose argmax it is,
  in row-major window order as torch's max-pool backward adds them), and the LRN's closed-form
  backward (``lrn.py``) with the window sums recomputed from x: ``size`` neighbours, each with its
  own ``size`` loads, as ``lrn_triton``'s backward.

Tensors are addressed through their four strides, so contiguous and channels_last inputs run
without a copy. Tests run these kernels on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from alexnet.model.lrn_triton import MAX_CHANNELS, _load, _scale

TILE = 2048  # elements (positions x padded channels) per program; not yet tuned on a GPU


def supports(x: Tensor, groups: int) -> bool:
    """Float32/16 or bfloat16 (float64 takes the portable path), at most 1024 maps per group."""
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    return x.dtype in dtypes and x.shape[1] // groups <= MAX_CHANNELS


def forward(x: Tensor, p: Any) -> tuple[Tensor, Tensor]:
    """``lrn_pool``'s forward (``p``: an ``LRNPoolParams``): the pooled maps and the argmax."""
    x = x.contiguous(memory_format=_memory_format(x))
    n, c, h, w = x.shape
    shape = (n, c, (h - p.pool) // p.stride + 1, (w - p.pool) // p.stride + 1)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    argmax = torch.empty_like(y, dtype=torch.int8)
    grid, meta = _launch(x, p, shape[2] * shape[3])
    with _device_of(x):
        _forward_kernel[grid](x, y, argmax, *_geometry(x, y, p), p.alpha, p.k, p.beta, **meta)
    return y, argmax


def backward(grad: Tensor, x: Tensor, argmax: Tensor, p: Any) -> Tensor:
    """``lrn_pool``'s gradient with respect to its input, recomputed from ``x``."""
    fmt = _memory_format(x)
    x = x.contiguous(memory_format=fmt)
    grad, argmax = grad.contiguous(memory_format=fmt), argmax.contiguous(memory_format=fmt)
    dx = torch.empty_like(x)
    grid, meta = _launch(x, p, x.shape[2] * x.shape[3])
    with _device_of(x):
        _backward_kernel[grid](
            grad, x, argmax, dx, *_geometry(x, grad, p), p.alpha, p.k, p.beta, **meta
        )
    return dx


def _device_of(x: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _memory_format(x: Tensor) -> torch.memory_format:
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _geometry(x: Tensor, y: Tensor, p: Any) -> tuple[int, ...]:
    """Groups, maps per group, the input's and the pooled maps' sides and both tensors' strides
    (y's also the gradient's and the argmax's: same shape, same memory format)."""
    _, c, h, w = x.shape
    return (p.groups, c // p.groups, h, w, y.shape[2], y.shape[3], *x.stride(), *y.stride())


def _launch(x: Tensor, p: Any, positions: int) -> tuple[tuple[int, int], dict[str, Any]]:
    block_c = triton.next_power_of_2(x.shape[1] // p.groups)
    block_p = max(1, TILE // block_c)
    meta = {
        "SIZE": p.size,
        "RELU_IN": p.relu == "input",
        "RELU_OUT": p.relu == "output",
        "BETA_075": p.beta == 0.75,
        "POOL": p.pool,
        "STRIDE": p.stride,
        "BLOCK_P": block_p,
        "BLOCK_C": block_c,
        "num_warps": 8,
    }
    return (x.shape[0] * p.groups, triton.cdiv(positions, block_p)), meta


@triton.jit
def _lrn_at(x_ptr, at, chan, channels, cs, ok, alpha, k, beta, SIZE: tl.constexpr,
            RELU_IN: tl.constexpr, RELU_OUT: tl.constexpr, BETA_075: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """f(x) at offsets ``at`` (BLOCK_P, 1) and channels ``chan`` of the group, float32."""
    total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for d in tl.static_range(SIZE):  # the window: channels c - n//2 .. c + n//2
        c = chan + (d - SIZE // 2)
        a = _load(x_ptr, at + c[None, :] * cs, c, channels, ok, RELU_IN)
        total += a * a
    x = _load(x_ptr, at + chan[None, :] * cs, chan, channels, ok, False)
    a = x
    if RELU_IN:
        a = tl.maximum(x, 0.0)
    y = a * _scale(k + alpha * total, beta, BETA_075)
    if RELU_OUT:
        y = tl.where(x > 0.0, y, 0.0)
    return y


@triton.jit
def _forward_kernel(x_ptr, y_ptr, arg_ptr, groups, channels, h_in, w_in, h_out, w_out,
                    xs_n, xs_c, xs_h, xs_w, ys_n, ys_c, ys_h, ys_w, alpha, k, beta,
                    SIZE: tl.constexpr, RELU_IN: tl.constexpr, RELU_OUT: tl.constexpr,
                    BETA_075: tl.constexpr, POOL: tl.constexpr, STRIDE: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    image, group = (row // groups).to(tl.int64), row % groups
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # pooled positions
    ok = pos < h_out * w_out
    oh, ow = pos // w_out, pos % w_out
    chan = tl.arange(0, BLOCK_C)
    x_base = image * xs_n + group * channels * xs_c
    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), dtype=tl.float32)
    arg = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    for dh in tl.static_range(POOL):
        for dw in tl.static_range(POOL):  # row-major: torch's order
            at = x_base + ((oh * STRIDE + dh) * xs_h + (ow * STRIDE + dw) * xs_w)[:, None]
            v = _lrn_at(x_ptr, at, chan, channels, xs_c, ok, alpha, k, beta, SIZE, RELU_IN,
                        RELU_OUT, BETA_075, BLOCK_P, BLOCK_C)  # fmt: skip
            v = v.to(y_ptr.dtype.element_ty).to(tl.float32)  # what the composition compares
            take = (v > best) | (v != v)  # larger, or NaN: torch's max-pool rule
            best = tl.where(take, v, best)
            arg = tl.where(take, dh * POOL + dw, arg)
    out = image * ys_n + (group * channels + chan)[None, :] * ys_c
    out = out + (oh * ys_h + ow * ys_w)[:, None]
    mask = ok[:, None] & (chan[None, :] < channels)
    tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(arg_ptr + out, arg.to(tl.int8), mask=mask)


@triton.jit
def _unpooled(g_ptr, arg_ptr, y_base, h, w, j, channels, ok, h_out, w_out, ys_c, ys_h, ys_w,
              POOL: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr,
              BLOCK_C: tl.constexpr):  # fmt: skip
    """The max-pool's backward at input (h, w), channels j: the sum of the pooled gradient of
    every window whose argmax is there, windows in row-major order (float32)."""
    REACH: tl.constexpr = (POOL - 1) // STRIDE + 1  # windows per axis that can hold a position
    total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    chan_ok = (j >= 0) & (j < channels)
    for i in tl.static_range(REACH):
        oh = h // STRIDE - (REACH - 1 - i)
        dh = h - oh * STRIDE
        row_ok = ok & (oh >= 0) & (oh < h_out) & (dh < POOL)
        for i2 in tl.static_range(REACH):
            ow = w // STRIDE - (REACH - 1 - i2)
            dw = w - ow * STRIDE
            pos_ok = row_ok & (ow >= 0) & (ow < w_out) & (dw < POOL)
            at = y_base + j[None, :] * ys_c + (oh * ys_h + ow * ys_w)[:, None]
            mask = pos_ok[:, None] & chan_ok[None, :]
            arg = tl.load(arg_ptr + at, mask=mask, other=-1).to(tl.int32)
            g = tl.load(g_ptr + at, mask=mask, other=0.0).to(tl.float32)
            total += tl.where(arg == (dh * POOL + dw)[:, None], g, 0.0)
    return total


@triton.jit
def _backward_kernel(g_ptr, x_ptr, arg_ptr, dx_ptr, groups, channels, h_in, w_in, h_out, w_out,
                     xs_n, xs_c, xs_h, xs_w, ys_n, ys_c, ys_h, ys_w, alpha, k, beta,
                     SIZE: tl.constexpr, RELU_IN: tl.constexpr, RELU_OUT: tl.constexpr,
                     BETA_075: tl.constexpr, POOL: tl.constexpr, STRIDE: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    image, group = (row // groups).to(tl.int64), row % groups
    pos = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # input positions
    ok = pos < h_in * w_in
    h, w = pos // w_in, pos % w_in
    chan = tl.arange(0, BLOCK_C)
    at = image * xs_n + group * channels * xs_c + (h * xs_h + w * xs_w)[:, None]
    y_base = image * ys_n + group * channels * ys_c
    HALF: tl.constexpr = SIZE // 2
    window = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # sum of g_j a_j s_j / (k + alpha S_j)
    g_c = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    s_c = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for d in tl.static_range(SIZE):  # neighbour j = c + d - n//2, whose window holds c
        j = chan + (d - HALF)
        total = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for e in tl.static_range(SIZE):  # S_j
            c = j + (e - HALF)
            a = _load(x_ptr, at + c[None, :] * xs_c, c, channels, ok, RELU_IN)
            total += a * a
        x_j = _load(x_ptr, at + j[None, :] * xs_c, j, channels, ok, False)
        a_j = x_j
        if RELU_IN:
            a_j = tl.maximum(x_j, 0.0)
        g_j = _unpooled(g_ptr, arg_ptr, y_base, h, w, j, channels, ok, h_out, w_out, ys_c, ys_h,
                        ys_w, POOL, STRIDE, BLOCK_P, BLOCK_C)  # fmt: skip
        if RELU_OUT:  # the ReLU after the LRN passes gradient where x > 0
            g_j = tl.where(x_j > 0.0, g_j, 0.0)
        base = k + alpha * total
        s_j = _scale(base, beta, BETA_075)
        window += g_j * a_j * s_j / base  # zero outside the group: a_j = g_j = 0 there
        if d == HALF:
            g_c = g_j
            s_c = s_j
    x = _load(x_ptr, at + chan[None, :] * xs_c, chan, channels, ok, False)
    a = x
    if RELU_IN:
        a = tl.maximum(x, 0.0)
    dx = g_c * s_c - 2.0 * alpha * beta * a * window
    if RELU_IN:  # the ReLU before the LRN: zero where the pre-activation was not positive
        dx = tl.where(x > 0.0, dx, 0.0)
    mask = ok[:, None] & (chan[None, :] < channels)
    tl.store(dx_ptr + at + chan[None, :] * xs_c, dx.to(dx_ptr.dtype.element_ty), mask=mask)
