"""The fused ReLU + LRN + max-pool op (``alexnet.model.lrn_pool``): its portable path against
the plain-autograd composition of ``reference_lrn`` (torch's ``F.local_response_norm``) and
``F.max_pool2d`` in float64, numerical gradients, ``opcheck``, the model's use of it, and the
Triton kernels in Triton's interpreter (and on a GPU when one is present) against float64."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from alexnet.model.lrn import reference_lrn
from alexnet.model.lrn_pool import LRNPoolParams, lrn_pool, portable_forward

from conftest import ROOT

PAPER = (5, 1e-4, 0.75, 2.0)  # n, alpha (raw sum), beta, k
F32_EPS, BF16_EPS = torch.finfo(torch.float32).eps, torch.finfo(torch.bfloat16).eps
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def activations(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pre-activations of either sign (more negative: windows of ReLU zeros), 20 to 300 away
    from zero, where the paper's constants make the normalisation matter."""
    magnitude = 20.0 + torch.rand(shape, dtype=torch.float64) * 280.0
    sign = torch.where(torch.rand(shape) < 0.6, -1.0, 1.0).double()
    return (magnitude * sign).to(dtype)


def with_ties(*shape: int) -> torch.Tensor:
    """Pre-activations repeated over 2x2 blocks of positions (all maps alike), so most pooling
    windows hold their maximum two or four times: only the tie rule decides the argmax."""
    n, c, h, w = shape
    small = activations(n, c, (h + 1) // 2, (w + 1) // 2)
    return small.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :h, :w].contiguous()


def composition(x: torch.Tensor, relu: str, groups: int) -> torch.Tensor:
    """What the op replaces, in plain autograd ops: the ReLU where ``relu`` puts it, torch's
    LRN per group, torch's 3x3 stride-2 max-pool."""
    a = F.relu(x) if relu == "input" else x
    y = reference_lrn(a, *PAPER, groups)
    return F.max_pool2d(F.relu(y) if relu == "output" else y, 3, 2)


def output_and_grad(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    x = x.detach().requires_grad_()
    y = fn(x)
    y.backward(grad)
    return y.detach(), x.grad


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("relu", ["input", "output", "none"])
@pytest.mark.parametrize("make", [activations, with_ties])
def test_portable_path_is_the_composition(make, relu: str, groups: int, layout: str) -> None:  # noqa: ANN001
    """float64, maps of 13 (-> 6) and 7 (-> 3) positions: outputs and input gradients within
    1e-12 of their size (float64 leaves errors near 1e-15), so a gradient sent to the wrong
    member of a tie (off by a whole value) fails."""
    for shape in ((2, 12, 13, 13), (1, 10, 7, 7)):
        x = make(*shape).contiguous(memory_format=LAYOUTS[layout])
        grad = torch.randn(shape[0], shape[1], (shape[2] - 1) // 2, (shape[3] - 1) // 2).double()
        got = output_and_grad(lambda t: lrn_pool(t, *PAPER, groups, relu), x, grad)
        want = output_and_grad(lambda t: composition(t, relu, groups), x, grad)
        assert got[0].is_contiguous(memory_format=LAYOUTS[layout])
        assert got[1].is_contiguous(memory_format=LAYOUTS[layout])
        for g, w in zip(got, want, strict=True):
            scale = w.abs().max().item()
            assert scale > 0 and (g - w).abs().max().item() <= 1e-12 * scale, (shape, relu)


def test_ties_go_to_the_first_maximum() -> None:
    """Every window's maximum repeated: the argmax is its first element (row-major)."""
    x = torch.full((1, 4, 7, 7), 50.0, dtype=torch.float64)  # all nine values of a window equal
    p = LRNPoolParams(*PAPER, 2, "input", 3, 2)
    corners = torch.tensor([0, 2, 4])[:, None] * 7 + torch.tensor([0, 2, 4])  # h * W + w
    assert torch.equal(portable_forward(x, p)[1], corners.expand(1, 4, 3, 3))
    x[..., 1, 1] = 60.0  # window (0, 0) now peaks inside, at (1, 1)
    assert torch.equal(portable_forward(x, p)[1][..., 0, 0], torch.full((1, 4), 8))


@pytest.mark.parametrize("relu", ["input", "output", "none"])
def test_gradcheck(relu: str) -> None:
    x = activations(1, 6, 5, 7).requires_grad_()  # 2 towers of 3 maps; 5x7 -> 2x3
    assert torch.autograd.gradcheck(lambda t: lrn_pool(t, *PAPER, 2, relu), (x,))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_opcheck(layout: str) -> None:
    """torch.library's checks: schema, fake implementations against the real outputs' shapes,
    dtypes and strides, the autograd registration and AOT dispatch (torch.compile)."""
    x = activations(2, 12, 7, 9).contiguous(memory_format=LAYOUTS[layout])
    args = (*PAPER, 2, "input", 3, 2)
    torch.library.opcheck(torch.ops.alexnet.lrn_pool.default, (x.requires_grad_(), *args))
    y, argmax = torch.ops.alexnet.lrn_pool(x.detach(), *args)
    grad = torch.randn_like(y)
    op = torch.ops.alexnet.lrn_pool_backward.default
    torch.library.opcheck(op, (grad, x.detach(), argmax, *args))


def test_bfloat16_is_computed_in_float32_and_rounded_before_pooling() -> None:
    x = activations(2, 12, 13, 13, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last
    )
    y = lrn_pool(x, *PAPER, 2, "input")
    exact = composition(x.double(), "input", 2)  # the max of the exact values
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert (y.double() - exact).abs().max() <= BF16_EPS * exact.abs().max()


def test_bad_arguments() -> None:
    x = activations(1, 6, 7, 7)
    with pytest.raises(ValueError, match="divisible"):
        lrn_pool(x, *PAPER, groups=4)
    with pytest.raises(ValueError, match="relu"):
        lrn_pool(x, *PAPER, relu="after")
    with pytest.raises(ValueError, match="pool"):
        lrn_pool(x, *PAPER, pool=9)


# --- in the model ------------------------------------------------------------------------------


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``relu`` of every fused op the model's LRN layers run."""
    from alexnet.model import layers

    calls: list[str] = []

    def counted(x: torch.Tensor, *args, relu: str, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        calls.append(relu)
        return lrn_pool(x, *args, relu=relu, **kwargs)

    monkeypatch.setattr(layers, "lrn_pool", counted)
    return calls


def watch(model: torch.nn.Module) -> None:
    """A hook on lrn1 and lrn2: the layers then run one by one, as ``summary.py`` needs."""
    for name in ("lrn1", "lrn2"):
        getattr(model, name).register_forward_hook(lambda m, i, o: None)


@pytest.mark.parametrize(
    "override, fused",
    [
        ("lrn.conv1_position=after_relu", ["input", "input"]),  # the paper
        ("lrn.conv1_position=before_relu", ["output", "input"]),  # CC2: pool(relu(lrn(conv1)))
        ("lrn.same_map_norm=true", ["input"]),  # pool2 comes after cnorm2
    ],
)
def test_the_model_fuses_lrn_and_pool_with_the_same_results(
    override: str, fused: list[str], fused_calls: list[str]
) -> None:
    """float64: logits and every parameter's gradient as with the layers run one by one (the
    LRN op, the ReLU and nn.MaxPool2d), within 1e-10 of their size."""
    from alexnet.model import build_model

    from conftest import image_batch, model_cfg

    torch.manual_seed(0)
    model = build_model(model_cfg(override, "num_classes=10")).double().eval()
    x, results = image_batch(1, dtype=torch.float64), []
    for hooked in (False, True):
        if hooked:
            watch(model)
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        results.append([y.detach(), *(p.grad.clone() for p in model.parameters())])
        assert fused_calls == ([] if hooked else fused)
        fused_calls.clear()
    for got, want in zip(*results, strict=True):
        scale = want.abs().max().item()
        assert scale > 0 and (got - want).abs().max().item() <= 1e-10 * scale


@pytest.mark.parametrize(
    "overrides",
    [("activation=tanh",), ("pooling=non_overlapping",), ("lrn.enabled=false",)],
)
def test_other_layers_run_one_by_one(overrides: tuple[str, ...], fused_calls: list[str]) -> None:
    from alexnet.model import AlexNet

    from conftest import image_batch, model_cfg

    with torch.device("meta"):
        model = AlexNet(model_cfg(*overrides))
    model.to_empty(device="cpu").eval()
    with torch.no_grad():
        model(image_batch(1))
    assert fused_calls == []


def test_two_device_towers_fuse_per_tower(fused_calls: list[str]) -> None:
    from alexnet.config import ModelConfig
    from alexnet.model.towers import TwoDeviceAlexNet

    from conftest import image_batch

    towers = TwoDeviceAlexNet(ModelConfig(num_classes=10), ("cpu", "cpu")).eval()
    with torch.no_grad():
        towers(image_batch(1))
    assert fused_calls == ["input"] * 4  # lrn1 + pool1 and lrn2 + pool2 in each tower
    assert towers.lrn1.groups == towers.lrn2.groups == 1


# --- Triton -----------------------------------------------------------------------------------

TRITON_SCRIPT = """
import sys
import torch
from alexnet.model import lrn_pool, lrn_pool_triton as kernels
from alexnet.model.lrn import reference_lrn
from alexnet.model.lrn_pool import LRNPoolParams

torch.manual_seed(0)
CL, NCHW = torch.channels_last, torch.contiguous_format
DEVICE = sys.argv[2]  # cpu: Triton's interpreter; cuda: the GPU
CASES = {  # shape, groups, relu, beta, dtype, layout, ties
    "float32": [((2, 12, 13, 13), 2, "input", 0.75, torch.float32, NCHW, False),
                ((1, 12, 13, 13), 2, "output", 0.75, torch.float32, CL, False),
                ((2, 10, 7, 7), 1, "none", 0.6, torch.float32, CL, False),
                ((1, 6, 14, 14), 2, "input", 0.75, torch.float32, NCHW, True)],
    "bfloat16": [((1, 8, 55, 55), 2, "output", 0.75, torch.bfloat16, NCHW, False),
                 ((1, 8, 27, 27), 1, "input", 0.75, torch.bfloat16, CL, False),
                 ((1, 6, 14, 14), 2, "output", 0.75, torch.bfloat16, CL, True)],
    "gpu": [((8, c, side, side), 2, relu, 0.75, dtype, fmt, False)  # LRN1 and LRN2, batch 8
            for c, side, relu in ((96, 55, "input"), (96, 55, "output"), (256, 27, "input"))
            for dtype in (torch.float32, torch.bfloat16) for fmt in (NCHW, CL)]
           + [((8, 96, 54, 54), 2, "input", 0.75, torch.bfloat16, CL, True)],
}


def inputs(shape, ties):
    n, c, h, w = shape
    small = (h + 1) // 2 if ties else h
    x = (torch.rand(n, c, small, small) * 280 + 20) * torch.where(
        torch.rand(n, c, small, small) < 0.6, -1.0, 1.0)
    return x.repeat_interleave(2, 2).repeat_interleave(2, 3)[..., :h, :w] if ties else x


def lrn_values(x64, p):
    a = x64.clamp_min(0) if p.relu == "input" else x64
    y = reference_lrn(a, p.size, p.alpha, p.beta, p.k, p.groups)
    return y.clamp_min(0) if p.relu == "output" else y


for shape, groups, relu, beta, dtype, fmt, ties in CASES[sys.argv[1]]:
    x = inputs(shape, ties).to(dtype).contiguous(memory_format=fmt)
    p = LRNPoolParams(5, 1e-4, beta, 2.0, groups, relu, 3, 2)
    y, argmax = (t.cpu() for t in kernels.forward(x.to(DEVICE), p))
    grad = torch.randn(y.shape).to(dtype).contiguous(memory_format=fmt)
    dx = kernels.backward(grad.to(DEVICE), x.to(DEVICE), argmax.to(DEVICE), p).cpu()
    for t in (y, argmax, dx):
        assert t.is_contiguous(memory_format=fmt), shape
    assert y.dtype == dx.dtype == dtype and argmax.dtype == torch.int8
    eps = torch.finfo(dtype).eps * (1 if dtype == torch.bfloat16 else 64)
    x64 = x.double().requires_grad_()
    windows = lrn_values(x64, p).unfold(2, 3, 2).unfold(3, 3, 2).flatten(-2)
    best = windows.detach().max(-1).values
    tol = eps * best.abs().max().item()
    assert (y.double() - best).abs().max() <= tol, (shape, "values")
    assert DEVICE == "cpu" or lrn_pool._triton(x.to(DEVICE), groups) is kernels
    picked = windows.gather(-1, argmax.long().unsqueeze(-1)).squeeze(-1)
    assert (best - picked.detach()).max() <= tol, (shape, "not a maximum")
    is_best = windows.detach() == best[..., None]
    first = is_best.int().argmax(-1)  # the first exact maximum
    runner_up = windows.detach().masked_fill(is_best, float("-inf")).max(-1).values
    clear = best - runner_up > tol  # exact ties, or a gap beyond rounding
    assert torch.equal(argmax.long()[clear], first[clear]), (shape, "argmax")
    assert clear.float().mean() > 0.9, (shape, "too many near ties to test the argmax")
    (picked * grad.double()).sum().backward()  # the same argmax, by autograd in float64
    err = (dx.double() - x64.grad).abs().max().item()
    assert err <= eps * x64.grad.abs().max().item(), (shape, relu, dtype, "grad", err)
print("ok", len(CASES[sys.argv[1]]))
"""


def run_kernel_checks(cases: str, device: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # read when triton is imported: a process of its own
    return subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, cases, device],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.parametrize("cases, count", [("float32", 4), ("bfloat16", 3)])
def test_triton_kernels_in_the_interpreter(cases: str, count: int) -> None:
    """The CUDA kernels on CPU tensors in Triton's interpreter against float64: pooled values,
    the argmax (a maximum; the first one of exact ties and wherever the gap exceeds rounding),
    and the input gradient for that argmax by autograd through torch's LRN."""
    done = run_kernel_checks(cases, "cpu")
    assert done.returncode == 0 and f"ok {count}" in done.stdout, done.stderr[-3000:]


@pytest.mark.cuda
def test_triton_kernels_on_cuda() -> None:
    """The same checks on a GPU, at LRN1's and LRN2's shapes (batch 8), and the op's choice of
    the kernels for CUDA tensors."""
    done = run_kernel_checks("gpu", "cuda")
    assert done.returncode == 0 and "ok 13" in done.stdout, done.stderr[-3000:]
