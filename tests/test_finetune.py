"""Fine-tuning (alexnet.finetune) and torchvision's weights in our model and back.

References: torchvision's own ``alexnet`` (random weights, no download) run in float64, and the
source checkpoint's tensors compared bit for bit after a fine-tuning run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from alexnet import finetune as finetune_cli
from alexnet import train
from alexnet.config import load_config
from alexnet.errors import UserError
from alexnet.inference.weights import Weights
from alexnet.model import AlexNet, build_model
from alexnet.model.torchvision_weights import (
    from_torchvision,
    to_torchvision,
    torchvision_config,
)
from alexnet.model.towers import TwoDeviceAlexNet
from alexnet.training import finetune
from alexnet.training.checkpoint import load_checkpoint, save_checkpoint
from alexnet.training.loop import run as train_run

from conftest import ROOT, assert_close_to_f64, image_batch, model_cfg, tiny_overrides, train_argv

# torchvision's alexnet, written out: conv1 padding 2, no LRN, dropout before fc6 and fc7.
TV_MODEL = (
    "arch=owt",
    "conv1_geometry=pad2_224",
    "lrn.enabled=false",
    "dropout.style=inverted",
    "dropout.placement=inputs",
)
FROZEN = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6")


def ours(*overrides: str) -> AlexNet:
    return build_model(model_cfg(*overrides)).eval()


def test_torchvision_weights_give_torchvisions_logits() -> None:
    tv = torchvision.models.alexnet(weights=None).eval()  # torch's default init, no download
    model = AlexNet(model_cfg(*TV_MODEL)).eval()
    model.load_state_dict(from_torchvision(tv.state_dict()))
    x = image_batch(2) / 60.0  # torchvision's input scale: [0,1] pixels divided by the std
    with torch.no_grad():
        got = model(x)
        reference = tv.double()(x.double())
        exact = model.double()(x.double())
    assert_close_to_f64(got, reference)  # fp32, within rounding of the logits' size
    assert_close_to_f64(exact, reference, ulps=1e-6)  # float64: the same function


@pytest.mark.parametrize("placement", ["outputs", "inputs"])
def test_our_owt_net_runs_in_torchvision(placement: str) -> None:
    """Paper-style dropout (x0.5 at test) is folded into the weights torchvision gets."""
    cfg = (*TV_MODEL[:3], "dropout.style=paper", f"dropout.placement={placement}")
    model = ours(*cfg, "init.preset=pytorch_default").double()
    tv = torchvision.models.alexnet(weights=None).double().eval()
    tv.load_state_dict(to_torchvision(model.state_dict(), model.cfg))
    x = image_batch(1, dtype=torch.float64) / 60.0
    with torch.no_grad():
        assert_close_to_f64(tv(x), model(x), ulps=1e-6)
        unfolded = torchvision.models.alexnet(weights=None).double().eval()
        unfolded.load_state_dict(to_torchvision(model.state_dict(), model_cfg(*TV_MODEL)))
        assert (unfolded(x) - model(x)).abs().max() > 1e-3 * model(x).abs().max()


def test_to_torchvision_refuses_what_torchvision_cannot_run() -> None:
    model = ours("arch=owt", "conv1_geometry=pad2_224")  # LRN on
    with pytest.raises(UserError, match=r"lrn\.enabled"):
        to_torchvision(model.state_dict(), model.cfg)


def _source_with_three_classes(tiny_run: Path, tmp_path: Path) -> tuple[Path, dict]:
    """tiny_run's best.pt with a 3-way fc8, so the 4-class run must start fc8 afresh."""
    state = load_checkpoint(tiny_run / "best.pt")
    state["model"]["fc8.weight"] = state["model"]["fc8.weight"][:3].clone()
    state["model"]["fc8.bias"] = state["model"]["fc8.bias"][:3].clone()
    state["config"]["model"]["num_classes"] = 3
    source = tmp_path / "source.pt"
    save_checkpoint(source, {k: v for k, v in state.items() if k not in ("format", "version")})
    return source, state["model"]


def test_finetuning_keeps_frozen_layers_and_trains_the_rest(
    tiny_run: Path, prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, weights = _source_with_three_classes(tiny_run, tmp_path)
    run = tmp_path / "tuned"
    extra = (
        f"finetune.init_from={source}",
        f"finetune.freeze=[{','.join(FROZEN)}]",
        "finetune.lr_mult={fc8: 10}",
        "optim.lr=0.01",
        "train.epochs=1",
        "train.steps_per_epoch=2",
    )
    cfg = load_config(ROOT / "configs/demo.yaml", tiny_overrides(prepared_tiny, run, *extra))
    assert train_run(cfg, progress=False) == 0
    log = capsys.readouterr().err
    assert "fc8: (4, 4096) here, (3, 4096) in the source" in log
    tuned = load_checkpoint(run / "last.pt")
    for key, value in tuned["model"].items():
        layer = key.split(".")[0]
        if layer in FROZEN:
            assert torch.equal(value, weights[key]), key  # bit-identical to the source
        elif layer == "fc7":
            assert not torch.equal(value, weights[key]), key
    # only the weights came from the source: a new schedule and position, and an optimiser
    # that holds state for the trainable fc7 and fc8 only (weights and biases)
    assert (tuned["epoch"], tuned["global_step"]) == (1, 2)
    assert len(tuned["optimizer"]["state"]) == 4
    lrs = {g["name"]: g["lr"] for g in tuned["optimizer"]["param_groups"]}
    assert lrs == {"weights": 0.01, "weights x10": 0.1, "biases": 0.01, "biases x10": 0.1}


def test_two_device_form_keeps_the_frozen_layers() -> None:
    model = build_model(model_cfg())
    finetune.freeze(model, ["conv2", "fc6"])
    towers = TwoDeviceAlexNet.from_model(model, ("cpu", "cpu"))
    frozen = {n for n, p in towers.named_parameters() if not p.requires_grad}
    assert frozen == {
        f"{layer}{t}.{k}" for layer in ("conv2", "fc6") for t in "ab" for k in ("weight", "bias")
    }


def test_torchvision_init_offline_is_one_error_line(prepared_tiny: Path, tmp_path: Path) -> None:
    """No cached weights (an empty TORCH_HOME) and no network (a proxy nobody listens on)."""
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "hub"), PYTHONPATH=str(ROOT))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env[var] = "http://127.0.0.1:9"  # port 9 (discard): connection refused
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    run = tmp_path / "run"
    argv = train_argv(prepared_tiny, run, "finetune.init_from=torchvision")
    done = subprocess.run(
        [sys.executable, "-m", "alexnet.train", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "alexnet-owt-7be5be79.pth" in lines[0] and "finetune.init_from" in lines[0]
    assert not run.exists()  # nothing was created before the weights were there


def test_bad_finetune_settings_are_one_clear_error(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = train_argv(prepared_tiny, tmp_path / "r", "finetune.freeze=[conv1,fc9]")
    assert train.main(argv) == 2
    assert "finetune.freeze: unknown layer 'fc9' (did you mean 'fc8'?)" in capsys.readouterr().err
    argv = train_argv(prepared_tiny, tmp_path / "r", f"finetune.init_from={tmp_path / 'no.pt'}")
    assert train.main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert finetune_cli.main(["--config", str(ROOT / "configs/demo.yaml")]) == 2
    assert "does not set finetune.init_from" in capsys.readouterr().err


def test_scene15_finetune_config_is_torchvisions_network_and_input() -> None:
    """configs/scene15_finetune.yaml feeds torchvision's weights what they were trained on."""
    cfg = load_config(ROOT / "configs/scene15_finetune.yaml")
    tv = torchvision.models.alexnet(weights=None)
    weights = from_torchvision(tv.state_dict())
    source = Weights(weights, torchvision_config(), "torchvision", "torchvision's weights")
    assert finetune.differences(cfg, source) == []
    assert cfg.finetune.init_from == "torchvision" and cfg.model.num_classes == 15
    paper_cfg = load_config(ROOT / "configs/scene15.yaml")  # the faithful net: told apart
    assert any("lrn.enabled" in d for d in finetune.differences(paper_cfg, source))
