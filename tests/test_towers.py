"""The two-device towers (alexnet.model.towers) against the single-device grouped AlexNet.

On ("cpu", "cpu") both forms must compute the same function and gradients from the same weights,
and draw the same dropout masks from the same random state.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from alexnet.config import LAYERS, ModelConfig, load_config
from alexnet.model import AlexNet, build_model
from alexnet.model.towers import TwoDeviceAlexNet, merge_towers, split_canonical

CPUS = ("cpu", "cpu")


def model_cfg(*overrides: str) -> ModelConfig:
    return load_config(None, [f"model.{o}" for o in overrides]).model


@pytest.fixture(scope="module")
def pair() -> tuple[AlexNet, TwoDeviceAlexNet]:
    torch.manual_seed(0)
    single = build_model(ModelConfig())
    return single, TwoDeviceAlexNet.from_model(single, CPUS)


def image_batch(n: int = 2, size: int = 224) -> torch.Tensor:
    return torch.randn(n, 3, size, size) * 60.0  # mean-subtracted 0-255 pixels


def assert_grads_match(single: AlexNet, towers: TwoDeviceAlexNet) -> None:
    ours = merge_towers({n: p.grad for n, p in towers.named_parameters()})
    for name, p in single.named_parameters():
        scale = p.grad.abs().max().item()
        assert scale > 0 and (ours[name] - p.grad).abs().max().item() <= 1e-5 * scale, name


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
    x, labels = image_batch(), torch.tensor([1, 998])
    out_single, out_towers = single(x), towers(x)
    torch.testing.assert_close(out_towers, out_single, rtol=1e-5, atol=1e-4)
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
    single = build_model(cfg).eval()
    towers = TwoDeviceAlexNet.from_model(single, CPUS).eval()
    x = image_batch(1, 227 if cfg.conv1_geometry == "crop227_valid" else 224)
    with torch.no_grad():
        torch.testing.assert_close(towers(x), single(x), rtol=1e-5, atol=1e-4)


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
    single = build_model(model_cfg(*overrides)).train()
    towers = TwoDeviceAlexNet.from_model(single, CPUS).train()
    x, labels = image_batch(), torch.tensor([5, 6])
    out_single, in_single = fc7_input(single, x, seed=7)
    out_towers, in_towers = fc7_input(towers, x, seed=7)
    with torch.no_grad():
        _, in_other = fc7_input(towers, x, seed=8)
    dropped = in_single == 0
    assert dropped.float().mean() > 0.4  # dropout's half, plus any ReLU zeros
    assert torch.equal(in_towers == 0, dropped) and not torch.equal(in_other == 0, dropped)
    torch.testing.assert_close(in_towers, in_single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_towers, out_single, rtol=1e-5, atol=1e-4)
    single.zero_grad()
    F.cross_entropy(out_single, labels).backward()
    F.cross_entropy(out_towers, labels).backward()
    assert_grads_match(single, towers)


def test_canonical_state_dict_round_trips(pair: tuple[AlexNet, TwoDeviceAlexNet]) -> None:
    single, towers = pair
    canonical = towers.canonical_state_dict()
    assert list(canonical) == [f"{n}.{k}" for n in LAYERS for k in ("weight", "bias")]
    assert all(torch.equal(canonical[k], v) for k, v in single.state_dict().items())
    changed = {k: v + 1.0 for k, v in canonical.items()}
    rebuilt = TwoDeviceAlexNet.from_state_dict(ModelConfig(), changed, CPUS)
    assert all(torch.equal(rebuilt.canonical_state_dict()[k], v) for k, v in changed.items())
    rebuilt.load_canonical_state_dict(canonical)
    back = rebuilt.to_alexnet().state_dict()
    assert all(torch.equal(back[k], v) for k, v in canonical.items())
    assert merge_towers(split_canonical(changed)).keys() == changed.keys()


def test_same_seed_gives_the_same_weights_as_build_model() -> None:
    torch.manual_seed(11)
    single = build_model(ModelConfig())
    torch.manual_seed(11)
    towers = TwoDeviceAlexNet(ModelConfig(), CPUS)
    canonical = towers.canonical_state_dict()
    assert all(torch.equal(canonical[k], v) for k, v in single.state_dict().items())


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
    towers = TwoDeviceAlexNet.from_model(single, ("cuda:0", "cpu")).train()
    assert towers.conv3a.weight.is_cuda and not towers.conv3b.weight.is_cuda
    x = image_batch().to("cuda:0")
    out_single, in_single = fc7_input(single, x, seed=3)
    out_towers, in_towers = fc7_input(towers, x, seed=3)
    assert out_towers.device == torch.device("cuda:0")
    assert torch.equal(in_towers == 0, in_single == 0)
    torch.testing.assert_close(out_towers, out_single, rtol=1e-4, atol=1e-4)


@pytest.mark.two_gpus
def test_towers_on_two_gpus(pair: tuple[AlexNet, TwoDeviceAlexNet], no_tf32: None) -> None:
    single = pair[0].eval()
    towers = TwoDeviceAlexNet.from_model(single, ("cuda:0", "cuda:1")).eval()
    assert towers.conv2b.weight.device == torch.device("cuda:1")
    assert towers.fc8.weight.device == torch.device("cuda:0")
    x = image_batch()
    with torch.no_grad():
        out = towers(x.to("cuda:0"))
    assert out.device == torch.device("cuda:0")
    torch.testing.assert_close(out.cpu(), single(x).detach(), rtol=1e-4, atol=1e-4)
