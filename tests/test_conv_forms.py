"""The tower-local convolutions' forms (alexnet.model.tower_conv) against torch's own grouped
convolution: outputs and every gradient in float64 within the rounding bound of a sum (n terms
each, ``n * eps * sum of |terms|``, elementwise), under bf16 autocast with channels_last against
float64, across the whole net, compiled, and ``runtime.tower_conv``'s choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from alexnet import runtime as runtime_lib
from alexnet.config import ConfigError, ModelConfig, ParallelConfig, RuntimeConfig, load_config
from alexnet.model import AlexNet, build_model
from alexnet.model import tower_conv as tc
from alexnet.model.tower_conv import FORMS, TowerConv2d, set_tower_conv_form

from conftest import image_batch, model_cfg

F64_EPS = torch.finfo(torch.float64).eps
BF16_EPS = torch.finfo(torch.bfloat16).eps
CPU = torch.device("cpu")

# (in, out, kernel, padding, input side) of the paper's tower-local layers, and §6's conv6.
LAYERS = {
    "conv2": (96, 256, 5, 2, 27),
    "conv4": (384, 384, 3, 1, 13),
    "conv5": (384, 256, 3, 1, 13),
    "conv6": (256, 256, 3, 1, 6),
}


def layer(name: str, dtype: torch.dtype = torch.float64) -> tuple[TowerConv2d, torch.Tensor]:
    c_in, c_out, k, pad, side = LAYERS[name]
    conv = TowerConv2d(c_in, c_out, k, padding=pad, groups=2).to(dtype)
    with torch.no_grad():
        conv.weight.normal_(0, 0.01)
        conv.bias.uniform_(-1, 1)
    return conv, torch.rand(2, c_in, side, side, dtype=dtype) * 100  # post-ReLU-like maps


def conv_and_grads(conv: TowerConv2d, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient, weight and bias gradients of ``conv`` at ``x``."""
    conv.zero_grad()
    x = x.detach().requires_grad_()
    y = conv(x)
    y.backward(grad)
    return [y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()]


def rounding_bounds(conv: TowerConv2d, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """Each quantity of ``conv_and_grads`` with every term replaced by its magnitude (torch's
    grouped conv on |x|, |w|, |grad|): a sum of n terms is within n * eps of that, any order."""
    w, b = conv.weight.detach().abs(), conv.bias.detach().abs()
    xa, ga = x.abs().requires_grad_(), grad.abs()
    wa = w.clone().requires_grad_()
    out = F.conv2d(xa, wa, b, padding=conv.padding, groups=2)
    (out * ga).sum().backward()  # d/dx: sum |g| |w|; d/dw: sum |g| |x|
    return [out.detach(), xa.grad, wa.grad, ga.sum((0, 2, 3))]


def terms(conv: TowerConv2d, x: torch.Tensor) -> list[int]:
    """Terms per element: the dense form's c_in k^2 (+ bias), c_out k^2, and N H W twice."""
    k2 = conv.kernel_size[0] ** 2
    positions = x.shape[0] * x.shape[2] * x.shape[3]
    return [conv.in_channels * k2 + 1, conv.out_channels * k2, positions, positions]


@pytest.mark.parametrize("form", ["block_diagonal", "per_tower"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_forms_match_torchs_grouped_conv(name: str, form: str) -> None:
    conv, x = layer(name)
    grad = torch.randn(conv(x).shape, dtype=torch.float64)
    conv.form = "grouped"
    want = conv_and_grads(conv, x, grad)
    conv.form = form
    got = conv_and_grads(conv, x, grad)
    bounds = rounding_bounds(conv, x, grad)
    what = ("output", "input grad", "weight grad", "bias grad")
    for g, w, bound, n, label in zip(got, want, bounds, terms(conv, x), what, strict=True):
        assert g.shape == w.shape, label
        # both results lie within n eps |terms| of the exact sum
        assert ((g - w).abs() <= 2 * n * F64_EPS * bound).all(), (name, form, label)
    assert not (want[0] - F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=2)).any()


@pytest.mark.parametrize("form", FORMS)
def test_bf16_autocast_and_channels_last(form: str) -> None:
    """Under bf16 autocast each form's output and gradients are within bf16 rounding (of the
    output, the weight and the incoming gradient) of the float64 result for the same values."""
    conv, x = layer("conv2", torch.float32)
    x = x.bfloat16().contiguous(memory_format=torch.channels_last)  # as the previous layer gives
    conv = conv.to(memory_format=torch.channels_last)
    grad = torch.randn(2, 256, 27, 27).contiguous(memory_format=torch.channels_last)
    conv.form = form
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv_and_grads(conv, x, grad)
    assert got[0].dtype == got[1].dtype == torch.bfloat16
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    exact = TowerConv2d(96, 256, 5, padding=2, groups=2).double()
    exact.load_state_dict(conv.state_dict())
    want = conv_and_grads(exact, x.double(), grad.double())
    bounds = rounding_bounds(exact, x.double(), grad.double())
    for g, w, bound in zip(got, want, bounds, strict=True):
        assert ((g.double() - w).abs() <= 2 * BF16_EPS * bound).all(), form


class ConvCalls(TorchFunctionMode):
    """Records (weight shape, groups) of every F.conv2d call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.conv2d:
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            self.calls.append((tuple(args[1].shape), groups))
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "form, calls",
    [
        ("grouped", [((256, 48, 5, 5), 2)]),
        ("block_diagonal", [((256, 96, 5, 5), 1)]),  # one dense conv
        ("per_tower", [((128, 48, 5, 5), 1), ((128, 48, 5, 5), 1)]),  # one conv per tower
    ],
)
def test_a_forced_form_runs_that_form(form: str, calls: list) -> None:
    conv, x = layer("conv2", torch.float32)
    set_tower_conv_form(conv, form, CPU)
    with ConvCalls() as seen:
        conv(x)
    assert seen.calls == calls


def test_runtime_sets_the_form_and_auto_is_grouped_on_the_cpu() -> None:
    with torch.device("meta"):
        model = AlexNet(model_cfg("extra_conv6=true")).to_empty(device="cpu")
    towers = [model.conv2, model.conv4, model.conv5, model.conv6]
    assert all(isinstance(c, TowerConv2d) for c in towers)
    assert not isinstance(model.conv3, TowerConv2d) and model.conv3.groups == 1
    for form in ("per_tower", "auto"):
        rt = runtime_lib.setup(ParallelConfig(devices=("cpu",)), RuntimeConfig(tower_conv=form))
        assert rt.tower_conv == form
        rt.wrap(model)
        assert [c.form for c in towers] == [form if form != "auto" else "grouped"] * 4
    assert load_config(None, ["runtime.tower_conv=block_diagonal"]).runtime.tower_conv == (
        "block_diagonal"
    )
    with pytest.raises(ConfigError, match="tower_conv"):
        load_config(None, ["runtime.tower_conv=dense"])


def test_auto_measures_each_layer_kind_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """auto (measured as on CUDA) takes the fastest form, times each form once per layer
    geometry and input, reuses that for a second layer alike, and logs the choice once."""
    timed: list[str] = []
    fake_ms = {"grouped": 3.0, "block_diagonal": 2.0, "per_tower": 1.0}
    monkeypatch.setattr(tc, "_time_form", lambda form, conv, x: timed.append(form) or fake_ms[form])
    monkeypatch.setattr(tc, "_CHOSEN", {})
    first, x = layer("conv4", torch.float32)
    second, _ = layer("conv4", torch.float32)
    for conv in (first, second):
        set_tower_conv_form(conv, "auto", torch.device("cuda"))  # as on a GPU
        assert conv.form == "auto"
        conv(x)
        assert conv.form == "per_tower"
    assert timed == list(FORMS)
    log = capsys.readouterr().err
    assert log.count("runtime.tower_conv auto") == 1 and "-> per_tower" in log


def test_auto_measurement_leaves_the_model_and_random_stream_alone() -> None:
    conv, x = layer("conv6", torch.float32)
    state = torch.get_rng_state()
    with torch.no_grad():  # an evaluation's first call: the forms are still timed with gradients
        form = tc.choose_form(conv, x[:1])
    assert form in FORMS
    assert torch.equal(torch.get_rng_state(), state)
    assert conv.weight.grad is None and conv.bias.grad is None


@pytest.mark.slow
def test_whole_net_forms_match() -> None:
    """Every form in the whole net (conv6 included): logits and all parameter gradients within
    1e-10 of their size of the grouped net's (float64 leaves errors near 1e-16)."""
    torch.manual_seed(0)
    model = build_model(model_cfg("extra_conv6=true")).double().eval()
    x = image_batch(1, dtype=torch.float64)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    results = {}
    for form in FORMS:
        set_tower_conv_form(model, form, CPU)
        model.zero_grad()
        y = model(x)
        F.cross_entropy(y, torch.tensor([998])).backward()
        results[form] = [y.detach(), *(p.grad.clone() for p in model.parameters())]
        assert {k: v.shape for k, v in model.state_dict().items()} == keys
    assert keys["conv2.weight"] == (256, 48, 5, 5) and keys["conv6.weight"] == (256, 128, 3, 3)
    for form in ("block_diagonal", "per_tower"):
        for got, want in zip(results[form], results["grouped"], strict=True):
            scale = want.abs().max().item()
            assert scale > 0 and (got - want).abs().max().item() <= 1e-10 * scale, form


@pytest.mark.parametrize("form", [*FORMS, "auto"])
def test_compiled_forms_match_eager(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile(fullgraph=True) traces each form; auto (measured as on CUDA) is measured
    by one eager call before Dynamo traces the chosen form."""
    monkeypatch.setattr(tc, "_CHOSEN", {})
    monkeypatch.setattr(tc, "REPEATS", 1)
    conv, x = layer("conv5")
    model = torch.nn.Sequential(conv)
    grad = torch.randn(2, 256, 13, 13, dtype=torch.float64)
    conv.form = "grouped"
    want = conv_and_grads(conv, x, grad)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    set_tower_conv_form(model, form, torch.device("cuda"), compiled)
    conv.zero_grad()
    xg = x.clone().requires_grad_()
    compiled(xg).backward(grad)
    assert conv.form in FORMS
    got = [compiled(x).detach(), xg.grad, conv.weight.grad, conv.bias.grad]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12 * w.abs().max().item())


@pytest.mark.slow
def test_compiled_net_in_each_form_matches_eager() -> None:
    """The whole net, compiled with fullgraph=True, in the two new forms."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=10)).double().eval()
    x = image_batch(1, dtype=torch.float64)
    for form in ("block_diagonal", "per_tower"):
        set_tower_conv_form(model, form, CPU)
        results = []
        for run in (torch.compile(model, fullgraph=True, backend="aot_eager"), model):
            model.zero_grad()
            y = run(x)
            y.square().sum().backward()
            results.append([y, *(p.grad.clone() for p in model.parameters())])
        for compiled, eager in zip(*results, strict=True):
            torch.testing.assert_close(
                compiled, eager, rtol=1e-10, atol=1e-12 * eager.abs().max().item()
            )
