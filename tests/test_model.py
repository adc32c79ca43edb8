"""AlexNet (alexnet.model) against the paper's layer table, formulas and initialisation.

Expected numbers come from faithful-spec.md sections 1-3 (per-layer parameters and multiply-adds,
the init table) or from independent float64 computations written here, never from model.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.config import InitConfig, ModelConfig
from alexnet.model import AlexNet, PaperDropout, PaperLRN, build_model
from alexnet.model.__main__ import main
from alexnet.model.summary import summarize

from conftest import assert_close_to_f64, image_batch, model_cfg

# faithful-spec.md 1.1: (output C x H x W, parameters, multiply-adds per image).
SPEC_TABLE = {
    "conv1": ((96, 55, 55), 34_944, 105_415_200),
    "pool1": ((96, 27, 27), 0, 0),
    "conv2": ((256, 27, 27), 307_456, 223_948_800),
    "pool2": ((256, 13, 13), 0, 0),
    "conv3": ((384, 13, 13), 885_120, 149_520_384),
    "conv4": ((384, 13, 13), 663_936, 112_140_288),
    "conv5": ((256, 13, 13), 442_624, 74_760_192),
    "pool5": ((256, 6, 6), 0, 0),
    "fc6": ((4096,), 37_752_832, 37_748_736),
    "fc7": ((4096,), 16_781_312, 16_777_216),
    "fc8": ((1000,), 4_097_000, 4_096_000),
}
# The eight learned layers, written out (not taken from the code's own list).
NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
CONVS = NAMES[:5]


@pytest.fixture(scope="module")
def paper_model() -> AlexNet:
    torch.manual_seed(0)
    return build_model(ModelConfig()).eval()


def with_weights(cfg: ModelConfig, source: AlexNet) -> AlexNet:
    """An AlexNet for ``cfg`` holding ``source``'s weights (skips the costly default init)."""
    with torch.device("meta"):
        model = AlexNet(cfg)
    model.to_empty(device="cpu").load_state_dict(source.state_dict())
    return model.eval()


# --- the faithful defaults -------------------------------------------------------------------


def test_paper_counts_and_shapes(paper_model: AlexNet) -> None:
    rows = {r.name: r for r in summarize(paper_model, 224)}
    for name, (shape, params, macs) in SPEC_TABLE.items():
        row = rows[name]
        assert (row.output_shape, row.params, row.macs) == (shape, params, macs), name
    assert sum(p.numel() for p in paper_model.parameters()) == 60_965_224
    assert sum(r.params for r in rows.values()) == 60_965_224
    assert sum(r.macs for r in rows.values()) == 724_406_816
    with torch.no_grad():
        logits = paper_model(image_batch(3))
    assert logits.shape == (3, 1000) and torch.isfinite(logits).all()


def test_state_dict_keys_are_the_paper_layer_names(paper_model: AlexNet) -> None:
    expected = [f"{n}.{k}" for n in NAMES for k in ("weight", "bias")]  # conv1.weight .. fc8.bias
    assert list(paper_model.state_dict()) == expected


def test_towers_as_groups(paper_model: AlexNet) -> None:
    groups = {n: getattr(paper_model, n).groups for n in CONVS}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert paper_model.lrn1.groups == paper_model.lrn2.groups == 2


# --- tower isolation (§3.2) --------------------------------------------------------------------


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """Record (child name, first input, output) for every call of the model's children."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def record(name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls.append((name, inputs[0], output))

    children = model.named_children()
    handles = [m.register_forward_hook(functools.partial(record, n)) for n, m in children]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def run_recorded(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    with recording(model) as calls, torch.no_grad():
        model(x)
    return calls


# Half of each layer's inputs and half of its outputs belong to each tower.
@pytest.mark.parametrize(
    "layer, talks",
    [("conv2", False), ("conv4", False), ("conv5", False), ("conv3", True), ("fc6", True)],
)
def test_towers_see_only_their_own_maps_except_at_conv3_and_fc(
    paper_model: AlexNet, layer: str, talks: bool
) -> None:
    x = {name: i for name, i, _ in run_recorded(paper_model, image_batch(1))}[layer]
    module = getattr(paper_model, layer)
    with torch.no_grad():
        before = module(x)
    half_in, half_out = x.shape[1] // 2, before.shape[1] // 2
    for tower in (0, 1):  # perturb the other tower's inputs; watch this tower's outputs
        other = 1 - tower
        y = x.clone()
        y[:, other * half_in : (other + 1) * half_in] += torch.rand_like(y[:, :half_in]) * 50
        with torch.no_grad():
            after = module(y)
        own, theirs = (slice(t * half_out, (t + 1) * half_out) for t in (tower, other))
        assert torch.equal(before[:, own], after[:, own]) is not talks
        assert not torch.equal(before[:, theirs], after[:, theirs])


# --- initialisation (§5; spec 3.1) ---------------------------------------------------------------

# layer: (weight std, bias), written out from the spec's table
HIDDEN = ("conv2", "conv4", "conv5", "fc6", "fc7")
PAPER_INIT = {n: (0.01, 1.0 if n in HIDDEN else 0.0) for n in NAMES}
CAFFE_INIT = {
    n: (0.005 if n in ("fc6", "fc7") else 0.01, 0.1 if n in HIDDEN else 0.0) for n in NAMES
}
CC2_INIT = {
    n: (0.03 if n in ("conv3", "conv4", "conv5") else 0.01, PAPER_INIT[n][1]) for n in NAMES
}
# He et al.: sqrt(2 / fan_in), fan_in = the inputs one kernel sees (3x11x11, 48x5x5 per tower,
# 256x3x3, 192x3x3 per tower twice, 256x6x6, 4096); fc8 as the paper; biases 0
FAN_IN = {"conv1": 363, "conv2": 1200, "conv3": 2304, "conv4": 1728, "conv5": 1728}
KAIMING_INIT = {
    **{n: ((2 / f) ** 0.5, 0.0) for n, f in {**FAN_IN, "fc6": 9216, "fc7": 4096}.items()},
    "fc8": (0.01, 0.0),
}


def assert_init(model: nn.Module, table: dict[str, tuple[float, float]]) -> None:
    for name, (std, bias) in table.items():
        w = getattr(model, name).weight.detach().double()
        n = w.numel()
        assert abs(w.std().item() / std - 1) < 5 / (2 * n) ** 0.5, name  # 5 standard errors
        assert abs(w.mean().item()) < 5 * std / n**0.5, name
        assert torch.all(getattr(model, name).bias == bias), name


def test_paper_init(paper_model: AlexNet) -> None:
    assert_init(paper_model, PAPER_INIT)


@pytest.mark.parametrize(
    "preset, table",
    [("caffe", CAFFE_INIT), ("cuda_convnet2", CC2_INIT), ("kaiming", KAIMING_INIT)],
)
def test_init_presets(preset: str, table: dict) -> None:
    assert_init(build_model(model_cfg(f"init.preset={preset}")), table)


def test_init_overrides_and_pytorch_default() -> None:
    init = InitConfig(weight_std={"conv1": 0.05}, bias={"fc8": -7.0})
    cfg = dataclasses.replace(ModelConfig(), init=init)
    assert_init(build_model(cfg), {**PAPER_INIT, "conv1": (0.05, 0.0), "fc8": (0.01, -7.0)})
    model = build_model(model_cfg("init.preset=pytorch_default"))
    for name in NAMES:  # torch's kaiming_uniform(a=sqrt 5): U(+-1/sqrt(fan_in)), std bound/sqrt 3
        w = getattr(model, name).weight.detach()
        bound = 1 / (w[0].numel() ** 0.5)
        assert w.abs().max() <= bound and abs(w.std().item() * 3**0.5 / bound - 1) < 0.05, name


def test_every_parameter_gets_a_gradient() -> None:
    model = build_model(ModelConfig()).train()
    loss = F.cross_entropy(model(image_batch(2)), torch.tensor([3, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --- dropout (§4.2) ----------------------------------------------------------------------------


def test_paper_dropout_scales_at_test_time_not_in_training() -> None:
    x = torch.rand(64, 4096) + 1.0
    drop = PaperDropout(0.5, "paper")
    y = drop(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])  # no 1/(1-p) rescaling
    assert abs(kept.float().mean().item() - 0.5) < 5 * (0.25 / x.numel()) ** 0.5
    assert torch.equal(drop.eval()(x), x * 0.5)


def test_inverted_dropout_is_torchs() -> None:
    x = torch.rand(64, 4096) + 1.0
    drop = PaperDropout(0.5, "inverted")
    torch.manual_seed(3)
    ours = drop(x)
    torch.manual_seed(3)
    assert torch.equal(ours, F.dropout(x, 0.5, training=True))  # same mask, same computation
    torch.manual_seed(3)
    assert torch.equal(ours, PaperDropout(0.5, "paper")(x) * 2)  # same units, scaled by 1/(1-p)
    assert torch.equal(drop.eval()(x), x)


def call_order(model: AlexNet, x: torch.Tensor) -> list[str]:
    return [name for name, _, _ in run_recorded(model, x)]


def lrn_by_torch(a: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """The paper's LRN by torch's own F.local_response_norm (alpha/n: pass 5 * 1e-4), per tower."""
    n, c, h, w = a.shape
    grouped = a.double().reshape(n * groups, c // groups, h, w)
    return F.local_response_norm(grouped, 5, 5e-4, 0.75, 2.0).reshape(n, c, h, w)


def test_layer_order_and_dropout_placement(paper_model: AlexNet) -> None:
    """§3.3: ReLU, then LRN, then pooling. The LRN module applies the ReLU in front of it
    itself (one fused op), so ``act`` is not called between conv and LRN; the values show the
    order: lrn1 = LRN(ReLU(conv1)) and lrn2 = LRN(ReLU(conv2))."""
    calls = run_recorded(paper_model, image_batch(1))
    order = [name for name, _, _ in calls]
    assert order[:4] == ["pad1", "conv1", "lrn1", "pool1"]
    assert order[-7:] == ["fc6", "act", "drop6", "fc7", "act", "drop7", "fc8"]  # §4.2: outputs
    outputs = {name: out for name, _, out in calls}
    for conv, lrn in (("conv1", "lrn1"), ("conv2", "lrn2")):
        expected = lrn_by_torch(F.relu(outputs[conv]))
        assert_close_to_f64(outputs[lrn], expected)
    before_relu = with_weights(model_cfg("lrn.conv1_position=before_relu"), paper_model)
    assert call_order(before_relu, image_batch(1))[:5] == ["pad1", "conv1", "lrn1", "act", "pool1"]
    tanh = with_weights(model_cfg("activation=tanh"), paper_model)  # no ReLU to fuse
    assert call_order(tanh, image_batch(1))[:5] == ["pad1", "conv1", "act", "lrn1", "pool1"]
    tv = with_weights(model_cfg("dropout.placement=inputs"), paper_model)
    tv_order = ["drop6", "fc6", "act", "drop7", "fc7", "act", "fc8"]  # torchvision: fc inputs
    assert call_order(tv, image_batch(1))[-7:] == tv_order


# --- each ablation switch changes what it claims, and nothing else ---------------------------


def structure_model(cfg: ModelConfig) -> AlexNet:
    with torch.device("meta"):  # shapes and module settings only, no weights
        return AlexNet(cfg)


def structure(cfg: ModelConfig) -> dict[str, str]:
    return {n: repr(m) for n, m in structure_model(cfg).named_children()}


@pytest.mark.parametrize(
    "override, changed",
    [
        ("lrn.enabled=false", {"lrn1", "lrn2"}),
        ("lrn.alpha_semantics=divided_by_n", {"lrn1", "lrn2"}),
        ("lrn.k=1", {"lrn1", "lrn2"}),
        ("lrn.per_tower=false", {"lrn1", "lrn2"}),
        ("activation=tanh", {"act", "lrn1", "lrn2"}),  # the LRNs no longer apply a ReLU
        ("pooling=non_overlapping", {"pool1", "pool2", "pool5"}),
        ("conv1_geometry=crop227_valid", {"pad1"}),
        ("conv1_geometry=pad2_224", {"pad1"}),
        ("dropout.style=inverted", {"drop6", "drop7"}),
        ("dropout.placement=inputs", set()),
        ("lrn.conv1_position=before_relu", {"lrn1"}),  # lrn1 no longer applies the ReLU
        ("num_classes=10", {"fc8"}),
        ("arch=one_tower", {"conv1", "conv2", "conv3", "conv4", "conv5", "lrn1", "lrn2"}),
        ("arch=owt", {"conv1", "conv2", "conv3", "conv4", "conv5", "lrn1", "lrn2"}),
    ],
)
def test_switch_changes_only_its_modules(override: str, changed: set[str]) -> None:
    paper, other = structure(ModelConfig()), structure(model_cfg(override))
    assert paper.keys() == other.keys()
    assert {n for n in paper if paper[n] != other[n]} == changed


def test_switch_effects(paper_model: AlexNet) -> None:
    assert isinstance(structure_model(model_cfg("lrn.enabled=false")).lrn2, nn.Identity)
    assert isinstance(structure_model(model_cfg("activation=tanh")).act, nn.Tanh)
    assert structure_model(model_cfg("lrn.per_tower=false")).lrn1.groups == 1
    pooled = with_weights(model_cfg("pooling=non_overlapping"), paper_model)
    assert (pooled.pool1.kernel_size, pooled.pool1.stride) == (2, 2)
    shapes = [r.output_shape for r in summarize(pooled, 224)]
    assert shapes == [r.output_shape for r in summarize(paper_model, 224)]


@pytest.mark.parametrize(
    "arch, widths, params",
    [
        ("one_tower", (48, 128, 192, 192, 256), None),  # §3.2 footnote 2
        ("owt", (64, 192, 384, 256, 256), 61_100_840),  # torchvision's count (spec 1.3)
    ],
)
def test_comparison_archs(arch: str, widths: tuple[int, ...], params: int | None) -> None:
    model = structure_model(model_cfg(f"arch={arch}"))
    convs = [getattr(model, n) for n in CONVS]
    assert tuple(c.out_channels for c in convs) == widths and all(c.groups == 1 for c in convs)
    fc = (model.fc6.in_features, model.fc6.out_features, model.fc7.out_features)
    assert fc == (9216, 4096, 4096)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize(
    "geometry, size, first, last",
    [
        (
            "cc_ceil",
            224,
            (slice(0, 11), slice(0, 11)),
            (slice(216, 224), slice(0, 8)),
        ),  # 3 px overhang
        ("crop227_valid", 227, (slice(0, 11), slice(0, 11)), (slice(216, 227), slice(0, 11))),
        (
            "pad2_224",
            224,
            (slice(0, 9), slice(2, 11)),
            (slice(214, 224), slice(0, 10)),
        ),  # 2 px, 1 px
    ],
)
def test_conv1_geometry(geometry: str, size: int, first: tuple, last: tuple) -> None:
    """Windows (0, 0) and (54, 54) of conv1 summed by hand: image rows/cols x kernel taps."""
    model = AlexNet(model_cfg(f"conv1_geometry={geometry}")).double()
    x = image_batch(1, size, dtype=torch.float64)
    out = model.conv1(model.pad1(x)).detach()
    assert out.shape == (1, 96, 55, 55)
    w, b = model.conv1.weight.detach(), model.conv1.bias.detach()
    for (pixels, taps), (i, j) in ((first, (0, 0)), (last, (54, 54))):
        patch = x[0, :, pixels, pixels]
        expected = torch.einsum("chw,ochw->o", patch, w[:, :, taps, taps]) + b
        # float64: 363 products of values below 300 leave errors far below 1e-9
        torch.testing.assert_close(out[0, :, i, j], expected, rtol=0, atol=1e-9)


def test_lrn_options_change_only_the_lrn_output(paper_model: AlexNet) -> None:
    x = image_batch(1)

    def conv1_and_lrn1(model: AlexNet) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = {name: out for name, _, out in run_recorded(model, x)}
        return outputs["conv1"], outputs["lrn1"]

    conv, lrn = conv1_and_lrn1(paper_model)
    for override in ("lrn.alpha_semantics=divided_by_n", "lrn.k=1", "lrn.per_tower=false"):
        other_conv, other_lrn = conv1_and_lrn1(with_weights(model_cfg(override), paper_model))
        assert torch.equal(conv, other_conv) and not torch.equal(lrn, other_lrn), override


# --- the command line --------------------------------------------------------------------------


def test_main_prints_the_table(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "60,965,224" in out and "724,406,816" in out and "96x55x55" in out
    config = tmp_path / "owt.yaml"
    config.write_text("model:\n  arch: owt\n")
    assert main(["--config", str(config), "--set", "model.lrn.enabled=false"]) == 0
    out = capsys.readouterr().out
    assert "61,100,840" in out and "lrn1" not in out  # torchvision's count (spec 1.3)


def test_main_reports_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "model.arhc=owt"]) == 2
    assert "did you mean 'model.arch'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "examples" in capsys.readouterr().out


def test_bad_lrn_and_dropout_arguments() -> None:
    with pytest.raises(ValueError, match="alpha_semantics"):
        PaperLRN(5, 1e-4, 0.75, 2.0, alpha_semantics="mean")
    with pytest.raises(ValueError, match="style"):
        PaperDropout(0.5, style="scaled")


def test_forward_to_returns_the_hidden_layers(paper_model: AlexNet) -> None:
    """pool5 flattened, fc6/fc7 after ReLU, chained by hand (float64) to the logits."""
    model = with_weights(ModelConfig(), paper_model).double()
    x = image_batch(2, dtype=torch.float64)
    with torch.no_grad():
        pool5 = model.forward_to(x, "pool5")
        fc6 = model.forward_to(x, "fc6")
        fc7 = model.forward_to(x, "fc7")
        assert pool5.shape == (2, 9216) and fc6.shape == fc7.shape == (2, 4096)
        torch.testing.assert_close(fc6, F.relu(F.linear(pool5, model.fc6.weight, model.fc6.bias)))
        # eval: the paper's dropout multiplies the outputs of fc6 and fc7 by 0.5 (§4.2)
        torch.testing.assert_close(
            fc7, F.relu(F.linear(0.5 * fc6, model.fc7.weight, model.fc7.bias))
        )
        logits = F.linear(0.5 * fc7, model.fc8.weight, model.fc8.bias)
        torch.testing.assert_close(model.forward_to(x, "fc8"), logits)
        torch.testing.assert_close(model(x), logits)
    with pytest.raises(ValueError, match="pool5, fc6, fc7, fc8"):
        model.forward_to(x, "conv3")
