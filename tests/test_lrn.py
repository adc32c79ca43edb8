"""The LRN op (§3.3, ``alexnet.model.lrn``) against the paper's formula written out in float64,
torch's ``F.local_response_norm`` (the former implementation), numerical gradients
(``gradcheck``), ``torch.library.opcheck``, bfloat16 rounding, and Triton's kernels (in Triton's
interpreter on the CPU, and on a GPU when one is present)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from alexnet.model import PaperLRN
from alexnet.model.lrn import LRNParams, lrn, portable_backward, portable_forward, reference_lrn

from conftest import ROOT, assert_close_to_f64

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7


def lrn_reference(
    a: torch.Tensor, n: int, alpha: float, beta: float, k: float, semantics: str, groups: int
) -> torch.Tensor:
    """The paper's formula, one map at a time, in float64."""
    a = a.double()
    out = torch.empty_like(a)
    per = a.shape[1] // groups
    scale = alpha if semantics == "raw_sum" else alpha / n
    for g in range(groups):
        for i in range(per):
            lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
            s = sum(a[:, g * per + j] ** 2 for j in range(lo, hi + 1))
            out[:, g * per + i] = a[:, g * per + i] / (k + scale * s) ** beta
    return out


def activations(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pre-activations of either sign, at least 20 away from ReLU's kink, up to ~300: at the
    paper's constants alpha * (sum of squares) is O(1), so the normalisation matters."""
    magnitude = 20.0 + torch.rand(shape, dtype=torch.float64) * 280.0
    sign = torch.randint(0, 2, shape, dtype=torch.float64) * 2 - 1
    return (magnitude * sign).to(dtype)


@pytest.mark.parametrize("semantics", ["raw_sum", "divided_by_n"])
@pytest.mark.parametrize("k", [2.0, 1.0])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_lrn_matches_the_formula(semantics: str, k: float, groups: int, relu: bool) -> None:
    x = activations(2, 96, 4, 5)
    lrn_module = PaperLRN(5, 1e-4, 0.75, k, semantics, groups, relu=relu)
    a = x.clamp_min(0) if relu else x
    expected = lrn_reference(a, 5, 1e-4, 0.75, k, semantics, groups)
    assert_close_to_f64(lrn_module(x), expected)
    torch.testing.assert_close(lrn_module(x.double()), expected, rtol=1e-13, atol=0.0)
    assert (expected - a.double()).abs().max() > 1.0  # not close to the identity


@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 takes the square-root path, 0.6 pow
def test_other_constants_match_the_formula(beta: float) -> None:
    x = activations(2, 20, 3, 3)
    expected = lrn_reference(x, 3, 3e-4, beta, 1.5, "raw_sum", 2)
    assert_close_to_f64(lrn(x, 3, 3e-4, beta, 1.5, groups=2), expected)


def test_lrn_tower_boundary() -> None:
    a = torch.rand(1, 96, 3, 3) * 300.0
    b = a.clone()
    b[:, 48] += 100.0  # first map of tower B
    per_tower = PaperLRN(5, 1e-4, 0.75, 2.0, groups=2)
    across = PaperLRN(5, 1e-4, 0.75, 2.0, groups=1)
    assert torch.equal(per_tower(a)[:, :48], per_tower(b)[:, :48])
    assert not torch.equal(per_tower(a)[:, 49:51], per_tower(b)[:, 49:51])
    assert not torch.equal(across(a)[:, 46:48], across(b)[:, 46:48])  # 46, 47 see 48 when ungrouped
    assert torch.equal(across(a)[:, :46], across(b)[:, :46])


# --- the closed-form backward ---------------------------------------------------------------


@pytest.mark.parametrize("semantics", ["raw_sum", "divided_by_n"])
@pytest.mark.parametrize("k", [2.0, 1.0])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_gradcheck_per_tower(semantics: str, k: float, relu: bool, beta: float) -> None:
    """Two towers of 6 maps: the n=5 windows are cut at both channel edges of each tower."""
    x = activations(2, 12, 2, 3, dtype=torch.float64).requires_grad_()
    module = PaperLRN(5, 1e-4, beta, k, semantics, groups=2, relu=relu)
    assert torch.autograd.gradcheck(module, (x,))


def test_gradient_stays_in_its_tower() -> None:
    x = activations(1, 12, 1, 1, dtype=torch.float64)
    per_tower = torch.autograd.functional.jacobian(lambda t: lrn(t, 5, 1e-4, 0.75, 2.0, 2), x)
    across = torch.autograd.functional.jacobian(lambda t: lrn(t, 5, 1e-4, 0.75, 2.0, 1), x)
    i = torch.arange(12)
    window = (i[:, None] - i[None, :]).abs() <= 2  # output map i depends on inputs i-2 .. i+2
    same_tower = (i[:, None] // 6) == (i[None, :] // 6)
    assert torch.equal(per_tower.reshape(12, 12) != 0, window & same_tower)
    assert torch.equal(across.reshape(12, 12) != 0, window)


def test_matches_the_former_implementation_in_float32() -> None:
    """Forward and backward against F.local_response_norm with autograd (the former code),
    on LRN1-like maps, within float32 rounding at the scale of the values."""
    x = activations(2, 96, 13, 13).clamp_min(0).requires_grad_()
    old_x = x.detach().clone().requires_grad_()
    y, old = lrn(x, 5, 1e-4, 0.75, 2.0, 2), reference_lrn(old_x, 5, 1e-4, 0.75, 2.0, 2)
    grad = torch.randn_like(y)
    y.backward(grad)
    old.backward(grad)
    assert_close_to_f64(y, old)
    assert_close_to_f64(x.grad, old_x.grad)


def test_channels_last_in_channels_last_out() -> None:
    x = activations(2, 96, 5, 7)
    reference = lrn_reference(x.clamp_min(0), 5, 1e-4, 0.75, 2.0, "raw_sum", 2)
    nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = lrn(nhwc, 5, 1e-4, 0.75, 2.0, 2, relu=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_f64(y, reference)
    grad = torch.randn_like(y)
    y.backward(grad)
    x64 = x.double().requires_grad_()
    lrn(x64, 5, 1e-4, 0.75, 2.0, 2, relu=True).backward(grad.double())  # gradchecked above
    assert nhwc.grad.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_f64(nhwc.grad, x64.grad)


def test_bfloat16_is_computed_in_float32_and_rounded_once() -> None:
    """Under bf16 autocast the conv hands the LRN bf16 maps: the result is bf16 and within one
    bf16 rounding of the exact value for those maps (and so of the float32 path)."""
    conv = torch.nn.Conv2d(3, 96, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = conv(activations(2, 3, 6, 6))
        y = lrn(x, 5, 1e-4, 0.75, 2.0, 2, relu=True)
    assert x.dtype == y.dtype == torch.bfloat16
    exact = lrn_reference(x.float().clamp_min(0), 5, 1e-4, 0.75, 2.0, "raw_sum", 2)
    assert (y.double() - exact).abs().max() <= BF16_EPS * exact.abs().max()
    x = x.detach().requires_grad_()
    grad = torch.randn_like(x)
    lrn(x, 5, 1e-4, 0.75, 2.0, 2, relu=True).backward(grad)
    x64 = x.double().detach().requires_grad_()
    lrn(x64, 5, 1e-4, 0.75, 2.0, 2, relu=True).backward(grad.double())
    assert x.grad.dtype == torch.bfloat16
    assert (x.grad.double() - x64.grad).abs().max() <= BF16_EPS * x64.grad.abs().max()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_opcheck(channels_last: bool, relu: bool) -> None:
    """torch.library's own checks: schema, fake (meta) implementations against the real
    outputs' shapes and strides, the autograd registration, and AOT dispatch (torch.compile)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = activations(2, 12, 3, 4, dtype=torch.float64).contiguous(memory_format=fmt)
    args = (5, 1e-4, 0.75, 2.0, 2, relu)
    torch.library.opcheck(torch.ops.alexnet.lrn.default, (x.requires_grad_(), *args))
    grad = torch.randn_like(x)
    torch.library.opcheck(torch.ops.alexnet.lrn_backward.default, (grad, x.detach(), *args))


def test_the_block_walk_covers_the_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks smaller than one map (and ragged last blocks) give the same values."""
    import alexnet.model.lrn_portable as portable

    x = activations(3, 10, 7, 9, dtype=torch.float64)
    p = LRNParams(5, 1e-4, 0.75, 2.0, 2, True)
    grad = torch.randn_like(x)
    whole = portable_forward(x, p), portable_backward(grad, x, p)
    monkeypatch.setattr(portable, "BLOCK", 17)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl, gl = x.contiguous(memory_format=layout), grad.contiguous(memory_format=layout)
        torch.testing.assert_close(portable_forward(xl, p), whole[0], rtol=1e-14, atol=0.0)
        torch.testing.assert_close(portable_backward(gl, xl, p), whole[1], rtol=1e-14, atol=0.0)


def test_worker_threads_give_the_same_bits_and_leave_torch_threads_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks taken by several worker threads (each block's ops run on one core) give exactly
    the one-thread result, and the process's torch thread setting is untouched."""
    import threading

    import alexnet.model.lrn_portable as portable

    x = activations(4, 12, 9, 9)
    grad = torch.randn_like(x)
    p = LRNParams(5, 1e-4, 0.75, 2.0, 2, True)
    before = torch.get_num_threads()
    monkeypatch.setattr(portable, "BLOCK", 100)
    try:
        torch.set_num_threads(1)
        alone = portable_forward(x, p), portable_backward(grad, x, p)
        torch.set_num_threads(3)
        shared = portable_forward(x, p), portable_backward(grad, x, p)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert torch.get_num_threads() == 3 and seen == [3]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(alone, shared, strict=True))


@pytest.mark.slow
def test_compiled_model_matches_eager() -> None:
    """torch.compile(fullgraph=True) traces the whole net, LRN op included, without a graph
    break (fullgraph raises on one); in float64, outputs and all gradients match eager.

    The backend is aot_eager: dynamo's graph and AOT autograd's joint graph, through the op's
    fake implementation and registered backward, run by eager kernels. Inductor's C++ code for
    the CPU depends on the vector ISA and, in torch 2.14, fails on two of them for this net in
    float64 (ATEN_CPU_CAPABILITY=default: C++ that does not compile; avx2: the max-pool backward
    scatters with garbage indices), so it would test torch's code generation, not ours."""
    from alexnet.config import ModelConfig
    from alexnet.model import build_model

    model = build_model(ModelConfig(num_classes=10)).double().eval()  # eval: no dropout draws
    x = activations(1, 3, 224, 224, dtype=torch.float64)
    results = []
    for run in (torch.compile(model, fullgraph=True, backend="aot_eager"), model):
        model.zero_grad()
        xg = x.clone().requires_grad_()
        y = run(xg)
        y.square().sum().backward()
        results.append([y, xg.grad, *(p.grad.clone() for p in model.parameters())])
    for compiled, eager in zip(*results, strict=True):
        torch.testing.assert_close(
            compiled, eager, rtol=1e-10, atol=1e-12 * eager.abs().max().item()
        )


# --- Triton ---------------------------------------------------------------------------------

TRITON_SCRIPT = """
import torch
from alexnet.model import lrn_triton
from alexnet.model.lrn import LRNParams, portable_backward, portable_forward

torch.manual_seed(0)
cases = [((2, 96, 5, 7), 2, True, 0.75, torch.float32, torch.contiguous_format),
         ((2, 96, 5, 7), 2, False, 0.75, torch.float32, torch.channels_last),
         ((1, 20, 3, 4), 1, True, 0.6, torch.float32, torch.channels_last),
         ((2, 32, 3, 3), 2, True, 0.75, torch.bfloat16, torch.contiguous_format)]
for shape, groups, relu, beta, dtype, fmt in cases:
    x = ((torch.rand(shape) - 0.5) * 600).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
    p = LRNParams(5, 1e-4, beta, 2.0, groups, relu)
    exact = portable_forward(x.double(), p), portable_backward(grad.double(), x.double(), p)
    ours = lrn_triton.forward(x, p), lrn_triton.backward(grad, x, p)
    eps = torch.finfo(dtype).eps * (1 if dtype == torch.bfloat16 else 64)
    for got, want in zip(ours, exact):
        assert got.dtype == dtype and got.is_contiguous(memory_format=fmt), (shape, fmt)
        err = (got.double() - want).abs().max().item()
        assert err <= eps * want.abs().max().item(), (shape, groups, relu, beta, dtype, err)
print("ok", len(cases))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_in_the_interpreter() -> None:
    """The CUDA kernels, run by Triton's interpreter on CPU tensors, against the float64
    portable path (itself checked against the formula and gradcheck above)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ok 4" in done.stdout, done.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_on_cuda_matches_the_portable_path(dtype: torch.dtype, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = activations(8, 96, 27, 27).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(x.shape).to(dtype).contiguous(memory_format=fmt)
    p = LRNParams(5, 1e-4, 0.75, 2.0, 2, True)
    exact = portable_forward(x.double(), p), portable_backward(grad.double(), x.double(), p)
    xc = x.cuda().requires_grad_()
    y = lrn(xc, 5, 1e-4, 0.75, 2.0, 2, relu=True)  # the op dispatches to Triton on CUDA
    y.backward(grad.cuda())
    eps = BF16_EPS if dtype == torch.bfloat16 else 64 * torch.finfo(torch.float32).eps
    for got, want in ((y, exact[0]), (xc.grad, exact[1])):
        assert got.dtype == dtype and got.is_contiguous(memory_format=fmt)
        err = (got.double().cpu() - want).abs().max().item()
        assert err <= eps * want.abs().max().item(), err


@pytest.mark.cuda
def test_float64_on_cuda_is_computed_in_float64() -> None:
    """Triton computes in float32, so float64 CUDA tensors take the portable path (whole-tensor
    ops on the caller's stream) and agree with the CPU to float64 rounding."""
    x = activations(2, 96, 5, 7, dtype=torch.float64)
    grad = torch.randn_like(x)
    results = []
    for device in ("cpu", "cuda"):
        # a leaf of its own on each device: x.to("cpu") would be x itself, and requires_grad_
        # would make x the leaf and the CUDA copy a non-leaf without .grad
        xd = x.detach().to(device, copy=True).requires_grad_()
        y = lrn(xd, 5, 1e-4, 0.75, 2.0, 2, relu=True)
        y.backward(grad.to(device))
        results.append((y.cpu(), xd.grad.cpu()))
    for cpu, cuda in zip(*results, strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=1e-12, atol=1e-12 * cpu.abs().max().item())
