"""alexnet.runtime: the speed options (compile modes, evaluation precision) and the wrappers'
key prefixes, which must never reach a checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from alexnet import runtime as runtime_lib
from alexnet.config import ConfigError, ModelConfig, ParallelConfig, RuntimeConfig, load_config
from alexnet.model import AlexNet
from alexnet.runtime import Runtime, canonical_state_dict, load_canonical_state_dict, unwrap
from alexnet.training.engine import evaluate

CPU = (torch.device("cpu"),)


@pytest.fixture(scope="module")
def model() -> AlexNet:
    with torch.device("meta"):  # keys only: no weights needed until copied
        shapes = AlexNet(ModelConfig(num_classes=10))
    model = shapes.to_empty(device="cpu")
    for p in model.parameters():
        nn.init.normal_(p)
    return model


@pytest.fixture
def process_group() -> None:
    """A one-process gloo group, so DDP can wrap a module in this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def expected_keys() -> list[str]:
    names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    return [f"{n}.{kind}" for n in names for kind in ("weight", "bias")]


def test_compile_wrapper_keys_never_reach_the_state_dict(model: AlexNet) -> None:
    compiled = torch.compile(model)  # wrapping compiles nothing until the first call
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap(compiled) is model
    state = canonical_state_dict(compiled)
    assert list(state) == expected_keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    wrapped = Runtime("single", CPU, compile=True).wrap(model)
    assert list(canonical_state_dict(wrapped)) == expected_keys()


def test_ddp_and_compiled_ddp_keys(model: AlexNet, process_group: None) -> None:
    ddp = nn.parallel.DistributedDataParallel(model)
    assert all(k.startswith("module.") for k in ddp.state_dict())
    for wrapped in (ddp, torch.compile(ddp)):
        assert unwrap(wrapped) is model
        assert list(canonical_state_dict(wrapped)) == expected_keys()
    zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    load_canonical_state_dict(torch.compile(ddp), zeros)
    assert all(p.abs().sum() == 0 for p in model.parameters())


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_compile_mode_reaches_torch_compile(
    mode: str, model: AlexNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: seen.append(mode) or module)
    rt = runtime_lib.setup(ParallelConfig(), RuntimeConfig(compile=True, compile_mode=mode))
    rt.wrap(model)
    assert seen == [None if mode == "default" else mode]


def test_compile_mode_needs_compile() -> None:
    with pytest.raises(ConfigError, match="compile_mode: reduce-overhead needs runtime.compile"):
        load_config(None, ["runtime.compile_mode=reduce-overhead"])


@pytest.mark.parametrize(
    "dtype, eval_dtype, train_out, eval_out",
    [
        ("float32", "same", torch.float32, torch.float32),
        ("bfloat16", "same", torch.bfloat16, torch.bfloat16),
        ("float32", "bfloat16", torch.float32, torch.bfloat16),
        ("bfloat16", "float32", torch.bfloat16, torch.float32),
    ],
)
def test_evaluation_has_its_own_precision(
    dtype: str, eval_dtype: str, train_out: torch.dtype, eval_out: torch.dtype
) -> None:
    rt = runtime_lib.setup(ParallelConfig(), RuntimeConfig(dtype=dtype, eval_dtype=eval_dtype))
    a = torch.randn(4, 4)
    with rt.autocast():
        assert torch.mm(a, a).dtype == train_out
    with rt.autocast(evaluation=True):
        assert torch.mm(a, a).dtype == eval_out


def test_evaluate_runs_in_inference_mode_and_eval_precision() -> None:
    """What the model sees during ``engine.evaluate``: inference mode, the eval autocast."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.is_inference_mode_enabled(), torch.mm(x, x.T).dtype))
            return x[:, :6]  # six "classes"

    rt = runtime_lib.setup(ParallelConfig(), RuntimeConfig(eval_dtype="bfloat16"))
    views, labels = torch.randn(2, 1, 3, 3), torch.tensor([0, 2])
    result = evaluate(Probe(), [(views.reshape(2, 1, 9), labels)], rt, show_progress=False)
    assert seen == [(True, torch.bfloat16)] and 0.0 <= result["top1_err"] <= 1.0
