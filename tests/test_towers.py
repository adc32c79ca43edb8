"""The two-device towers (alexnet.model.towers) against the single-device grouped AlexNet.

On ("cpu", "cpu") both forms must compute the same function and gradients from the same weights,
and draw the same dropout masks from the same random state. The comparisons run in float64, where
the two forms' different summation orders leave errors near 1e-16 of the values, so a bound of
1e-10 of the values' size holds on any CPU and still fails for any real difference.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from alexnet.config import ModelConfig, OptimConfig
from alexnet.model import AlexNet, build_model
from alexnet.model.towers import TwoDeviceAlexNet, merge_towers, split_canonical
from alexnet.training.optim import build_optimizer

from conftest import image_batch, model_cfg

CPUS = ("cpu", "cpu")
# Kept three layers to a line, to read like the layer table (ruff would put one key a line).
PAPER_KEYS = [
    "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
    "conv4.weight", "conv4.bias", "conv5.weight", "conv5.bias", "fc6.weight", "fc6.bias",
    "fc7.weight", "fc7.bias", "fc8.weight", "fc8.bias",
]  # fmt: skip


def float64_pair(cfg: ModelConfig) -> tuple[AlexNet, TwoDeviceAlexNet]:
    single = build_model(cfg).double()
    return single, TwoDeviceAlexNet.from_model(single, CPUS).double()


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    scale = want.abs().max().item()
    assert scale > 0 and (got - want).abs().max().item() <= 1e-10 * scale, what


def assert_grads_match(single: AlexNet, towers: TwoDeviceAlexNet) -> None:
    ours = merge_towers({n: p.grad for n, p in towers.named_parameters()})
    for name, p in single.named_parameters():
        assert_same(ours[name], p.grad, name)


@pytest.fixture(scope="module")
def pair() -> tuple[AlexNet, TwoDeviceAlexNet]:
    torch.manual_seed(0)
    return float64_pair(ModelConfig())


def test_weights_are_split_by_tower(pair: tuple[AlexNet, TwoDeviceAlexNet]) -> None:
    single, towers = pair
    assert towers.conv2a.weight.shape == (128, 48, 5, 5)  # own tower's 48 maps
    assert towers.conv3b.weight.shape == (192, 256, 3, 3)  # both towers' 256 maps
    assert towers.fc6a.weight.shape == (2048, 9216)
    assert torch.equal(towers.conv2b.weight, single.conv2.weight[128:])  # group 2 of conv2
    assert torch.equal(towers.conv5a.bias, single.conv5.bias[:128])
    assert torch.equal(towers.fc6b.weight, single.fc6.weight[2048:])
    assert torch.equal(towers.fc8.weight, single.fc8.weight)
    assert sum(p.numel() for p in towers.parameters()) == 60_965_224


def test_eval_outputs_and_gradients_match(pair: tuple[AlexNet, TwoDeviceAlexNet]) -> None:
    single, towers = pair
    single.eval().zero_grad()
    towers.eval().zero_grad()
    x, labels = image_batch(dtype=torch.float64), torch.tensor([1, 998])
    out_single, out_towers = single(x), towers(x)
    assert_same(out_towers, out_single)
    F.cross_entropy(out_single, labels).backward()
    F.cross_entropy(out_towers, labels).backward()
    assert_grads_match(single, towers)


@pytest.mark.parametrize(
    "overrides",
    [
        ("lrn.conv1_position=before_relu", "lrn.alpha_semantics=divided_by_n", "lrn.k=1"),
        ("conv1_geometry=crop227_valid", "pooling=non_overlapping", "activation=tanh"),
        ("conv1_geometry=pad2_224", "lrn.enabled=false", "lrn.per_tower=false"),
    ],
)
def test_options_match(overrides: tuple[str, ...]) -> None:
    cfg = model_cfg(*overrides)
    single, towers = float64_pair(cfg)
    size = 227 if cfg.conv1_geometry == "crop227_valid" else 224
    x = image_batch(1, size, dtype=torch.float64)
    with torch.no_grad():
        assert_same(towers.eval()(x), single.eval()(x))


def fc7_input(model: AlexNet | TwoDeviceAlexNet, x: torch.Tensor, seed: int) -> tuple:
    """Logits and fc7's input (dropout's zeros are visible there) for a forward from ``seed``."""
    fc7 = model.fc7a if isinstance(model, TwoDeviceAlexNet) else model.fc7  # fc7a sees all 4096
    seen = []
    handle = fc7.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        torch.manual_seed(seed)
        return model(x), seen[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("overrides", [(), ("dropout.style=inverted", "dropout.placement=inputs")])
def test_train_mode_draws_the_same_dropout_masks(overrides: tuple[str, ...]) -> None:
    single, towers = float64_pair(model_cfg(*overrides))
    single.train()
    towers.train()
    x, labels = image_batch(dtype=torch.float64), torch.tensor([5, 6])
    out_single, in_single = fc7_input(single, x, seed=7)
    out_towers, in_towers = fc7_input(towers, x, seed=7)
    with torch.no_grad():
        _, in_other = fc7_input(towers, x, seed=8)
    dropped = in_single == 0
    assert dropped.float().mean() > 0.4  # dropout's half, plus any ReLU zeros
    assert torch.equal(in_towers == 0, dropped) and not torch.equal(in_other == 0, dropped)
    assert_same(in_towers, in_single)
    assert_same(out_towers, out_single)
    F.cross_entropy(out_single, labels).backward()
    F.cross_entropy(out_towers, labels).backward()
    assert_grads_match(single, towers)


def test_training_steps_match_in_float64() -> None:
    """Three steps of the paper's SGD on each form: the optimiser works on the towers' halves
    of every layer, and the weights end where the grouped model's do."""
    torch.manual_seed(0)
    single, towers = float64_pair(ModelConfig())
    start = {k: v.clone() for k, v in single.state_dict().items()}
    optimizers = [build_optimizer(m, OptimConfig(lr=0.01)) for m in (single, towers)]
    for step in range(3):
        x, labels = image_batch(dtype=torch.float64), torch.tensor([step, 7])
        for model, optimizer in zip((single, towers), optimizers, strict=True):
            torch.manual_seed(100 + step)  # the same dropout masks in both forms
            optimizer.zero_grad()
            F.cross_entropy(model.train()(x), labels).backward()
            optimizer.step()
    got = towers.canonical_state_dict()
    for name, w in single.state_dict().items():
        assert_same(got[name] - start[name], w - start[name], name)  # the updates agree


def test_canonical_state_dict_round_trips() -> None:
    single = build_model(ModelConfig())  # float32: the round trip must be bit-exact
    towers = TwoDeviceAlexNet.from_model(single, CPUS)
    canonical = towers.canonical_state_dict()
    assert list(canonical) == PAPER_KEYS
    assert all(torch.equal(canonical[k], v) for k, v in single.state_dict().items())
    changed = {k: v + 1.0 for k, v in canonical.items()}
    rebuilt = TwoDeviceAlexNet.from_state_dict(ModelConfig(), changed, CPUS)
    assert all(torch.equal(rebuilt.canonical_state_dict()[k], v) for k, v in changed.items())
    rebuilt.load_canonical_state_dict(canonical)
    back = rebuilt.to_alexnet().state_dict()
    assert all(torch.equal(back[k], v) for k, v in canonical.items())
    assert list(merge_towers(split_canonical(changed))) == PAPER_KEYS


def test_default_initialisation_is_the_papers() -> None:
    """Built without weights, the towers start from §5's init: N(0, 0.01^2), biases 1 / 0."""
    towers = TwoDeviceAlexNet(ModelConfig(), CPUS)
    ones = ("conv2", "conv4", "conv5", "fc6", "fc7")
    for name, w in towers.canonical_state_dict().items():
        layer, kind = name.split(".")
        if kind == "bias":
            assert torch.all(w == (1.0 if layer in ones else 0.0)), name
        else:
            n = w.numel()  # sample std within 5 standard errors of 0.01
            assert abs(w.double().std().item() / 0.01 - 1) < 5 / (2 * n) ** 0.5, name


@pytest.mark.parametrize(
    "override, match",
    [
        ("arch=one_tower", "two_tower"),
        ("arch=owt", "two_tower"),
        ("lrn.per_tower=false", "per_tower"),
    ],
)
def test_rejects_what_two_devices_cannot_run(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TwoDeviceAlexNet(model_cfg(override), CPUS)


def test_rejects_wrong_device_count() -> None:
    with pytest.raises(ValueError, match="two devices"):
        TwoDeviceAlexNet(ModelConfig(), ("cpu",))


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions on the GPU, so CPU and GPU results are comparable."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.cuda
def test_towers_across_cuda_and_cpu(pair: tuple[AlexNet, TwoDeviceAlexNet], no_tf32: None) -> None:
    """A real device boundary: tower A on the GPU, tower B on the CPU, masks drawn on cuda:0."""
    single = copy.deepcopy(pair[0]).to("cuda:0").train()
    towers = TwoDeviceAlexNet.from_model(single, ("cuda:0", "cpu")).double().train()
    assert towers.conv3a.weight.is_cuda and not towers.conv3b.weight.is_cuda
    x = image_batch(dtype=torch.float64).to("cuda:0")
    out_single, in_single = fc7_input(single, x, seed=3)
    out_towers, in_towers = fc7_input(towers, x, seed=3)
    assert out_towers.device == torch.device("cuda:0")
    assert torch.equal(in_towers == 0, in_single == 0)
    assert_same(out_towers, out_single)


@pytest.mark.two_gpus
def test_towers_on_two_gpus(pair: tuple[AlexNet, TwoDeviceAlexNet], no_tf32: None) -> None:
    single = copy.deepcopy(pair[0]).eval()  # the module-scoped fixture stays as it was
    towers = TwoDeviceAlexNet.from_model(single, ("cuda:0", "cuda:1")).double().eval()
    assert towers.conv2b.weight.device == torch.device("cuda:1")
    assert towers.fc8.weight.device == torch.device("cuda:0")
    x = image_batch(dtype=torch.float64)
    with torch.no_grad():
        out = towers(x.to("cuda:0"))
        assert out.device == torch.device("cuda:0")
        assert_same(out.cpu(), single(x))
