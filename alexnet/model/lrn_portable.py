"""The portable path of the LRN op (``lrn.py``): plain tensor operations, block by block.

Used on the CPU, and for CUDA tensors Triton does not take (float64, or no Triton). The tensor
is seen as (rows, channels of one group, columns) and walked in blocks of about ``BLOCK``
elements, so the dozen elementwise passes of each direction run on data held in the cache; the
window sum over channels is ``n - 1`` additions of shifted slices of a zero-padded buffer.
On several cores, as many worker threads take blocks in turn, each running its ops on one core.
The outputs are marked for transparent huge pages before they are written (Linux).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import Tensor

BLOCK = 1 << 18  # elements per block: a block's few buffers stay in the cache


class LRNParams(NamedTuple):
    """The op's constants (the arguments of ``lrn`` after the tensor)."""

    size: int  # n, odd: the window is i - n//2 .. i + n//2
    alpha: float  # multiplies the raw sum of squares (the paper's alpha)
    beta: float
    k: float
    groups: int  # channel groups normalised apart (2 = the paper's towers)
    relu: bool  # the input is the pre-activation: ReLU first


def portable_forward(x: Tensor, p: LRNParams) -> Tensor:
    """The op's forward with plain tensor operations, block by block."""
    x = _supported_layout(x)
    y = _empty_like(x)
    _each_block(_forward_block, p, x, y)
    return y


def portable_backward(grad: Tensor, x: Tensor, p: LRNParams) -> Tensor:
    """The closed-form gradient with respect to the op's input, block by block."""
    x = _supported_layout(x)
    grad = grad.contiguous(memory_format=memory_format(x))
    dx = _empty_like(x)
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

    With several cores (``torch.get_num_threads()``) as many worker threads take blocks in
    turn, each running its ops on one core: no op waits for another core, so a busy machine
    costs no more than the cores it takes away, and blocks can be large enough (``BLOCK``)
    for the per-op overhead not to matter.
    """
    views = [_channel_view(t, p.groups) for t in (x, *others)]
    if x.device.type == "cpu":
        blocks = list(_blocks(views))  # the first is the largest
        threads = min(torch.get_num_threads(), len(blocks))
    else:  # e.g. float64 on a GPU: whole-tensor ops, in the caller's thread and CUDA stream
        blocks, threads = [tuple(views)], 1
    next_block = itertools.count().__next__  # atomic under the GIL

    @torch.inference_mode()  # worker threads do not inherit the caller's autograd state
    def worker() -> None:
        buffers = _Buffers(blocks[0][0], p, _compute_dtype(x))
        while (i := next_block()) < len(blocks):
            work(buffers.fit(blocks[i][0]), p, *blocks[i])

    if threads == 1:
        worker()
        return
    pool = _pool(torch.get_num_threads(), os.getpid())
    for done in [pool.submit(worker) for _ in range(threads)]:
        done.result()


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """``threads`` worker threads whose torch ops each run on one core, started at first use
    (per process: a fork has none of its parent's threads)."""
    main = torch.get_num_threads()
    started = threading.Barrier(threads + 1)

    def one_core() -> None:
        torch.get_num_threads()  # torch initialises a thread's setting at its first use: now
        torch.set_num_threads(1)  # this thread's OpenMP setting (the process's is restored below)
        started.wait()

    pool = ThreadPoolExecutor(threads, f"alexnet-lrn-{pid}", initializer=one_core)
    for _ in range(threads):  # each submit starts a thread while the others wait at the barrier
        pool.submit(int)
    started.wait()
    torch.set_num_threads(main)
    return pool


HUGE_PAGE = 2 << 20  # bytes: a transparent huge page on x86-64 and arm64 Linux
MADV_HUGEPAGE = 14  # linux/mman.h


def _empty_like(x: Tensor) -> Tensor:
    """``torch.empty_like(x)``; for a large CPU tensor on Linux, its 2 MiB-aligned middle is
    marked for transparent huge pages (``madvise(MADV_HUGEPAGE)``, what torch's own
    ``THP_MEM_ALLOC_ENABLE=1`` does for every tensor) before the first write: 512 times fewer
    page faults, which otherwise cost the op as much as its arithmetic."""
    out = torch.empty_like(x)
    madvise = _madvise() if out.device.type == "cpu" else None
    start = out.data_ptr()
    first = start + -start % HUGE_PAGE
    length = (start + out.numel() * out.element_size() - first) // HUGE_PAGE * HUGE_PAGE
    if madvise is not None and length > 0:
        madvise(first, length, MADV_HUGEPAGE)  # fails harmlessly where THP is off
    return out


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays


def memory_format(x: Tensor) -> torch.memory_format:
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _supported_layout(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=memory_format(x))


def _channel_view(t: Tensor, groups: int) -> Tensor:
    """``t`` as (rows, channels of one group, columns): windows run along dim 1. A view."""
    n, c, h, w = t.shape
    if memory_format(t) == torch.channels_last:  # (n, h, w, c) in memory
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
