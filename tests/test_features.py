"""alexnet.features: streamed features against the network applied by hand in float64, and the
linear probe against the optimality conditions of L2-regularised softmax regression (numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from alexnet import features
from alexnet.config import config_from_dict
from alexnet.data.packed import PackedSplit
from alexnet.inference.features import fit_probe
from alexnet.model import AlexNet
from alexnet.training.checkpoint import load_checkpoint, save_checkpoint

from conftest import assert_close_to_f64


def test_features_file_holds_each_images_activations(
    tiny_run: Path, prepared_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats" / "val-fc6.npz"
    args = ["--checkpoint", str(tiny_run / "best.pt"), "--data", str(prepared_tiny)]
    args += ["--split", "val", "--layer", "fc6", "--out", str(out), "--batch-size", "5"]
    assert features.main([*args, "--workers", "0", "--no-progress"]) == 0
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the memory map is gone
    with np.load(out) as z:
        got, labels, layer = torch.from_numpy(z["features"]), z["labels"], str(z["layer"])
    split = PackedSplit(prepared_tiny, "val")
    assert layer == "fc6" and labels.tolist() == split.labels.tolist()
    state = load_checkpoint(tiny_run / "best.pt")
    with torch.device("meta"):
        model = AlexNet(config_from_dict(state["config"]).model)
    model.to_empty(device="cpu").load_state_dict(state["model"])
    mean = state["data_stats"]["mean"].double()
    crops = torch.stack([v2.CenterCrop(224)(split.image(i).double() - mean) for i in range(16)])
    with torch.no_grad():
        want = model.double().eval().forward_to(crops, "fc6")
    assert got.shape == (16, 4096)
    assert_close_to_f64(got, want)


def softmax_regression_gradient(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """numpy: gradient of mean cross-entropy + l2/2 ||W||^2 at (weight, bias)."""
    z = x @ weight.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y) + l2 * weight, p.mean(0)


def test_probe_is_the_regularised_softmax_regression() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 20))
    y = rng.integers(0, 3, 90)
    x = (centres[y] + rng.normal(0, 0.8, (90, 20))).astype(np.float32) * 7 + 3
    probe = fit_probe(x, y, 3, l2=0.05)
    z = (x.astype(np.float64) - probe.mean.numpy()) / probe.std.numpy()  # its standardisation
    assert np.allclose(z.mean(0), 0, atol=1e-9) and np.allclose(z.std(0, ddof=1), 1)
    g_w, g_b = softmax_regression_gradient(z, y, probe.weight.numpy(), probe.bias.numpy(), 0.05)
    assert np.abs(g_w).max() < 1e-6 and np.abs(g_b).max() < 1e-6  # a stationary point
    assert np.abs(probe.weight.numpy()).max() > 0.1  # and not the trivial one
    score = probe.score(x, y)
    assert score["n"] == 90 and score["top1_err"] < 0.2  # well-separated classes
    predicted = (z @ probe.weight.numpy().T + probe.bias.numpy()).argmax(1)
    assert score["top1_err"] == pytest.approx(np.mean(predicted != y))


def test_probe_command(
    tiny_run: Path, prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The network was trained on other classes (3 of them) than the data's 4: the probe's
    classes are the data's."""
    state = load_checkpoint(tiny_run / "best.pt")
    for key in ("fc8.weight", "fc8.bias"):
        state["model"][key] = state["model"][key][:3].clone()
    state["config"]["model"]["num_classes"] = 3
    state["classes"] = state["class_names"] = ["x", "y", "z"]
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in state.items() if k not in ("format", "version")})
    args = ["--checkpoint", str(other), "--data", str(prepared_tiny), "--probe"]
    out = tmp_path / "probe.json"
    assert features.main([*args, "--layer", "pool5", "--json", str(out), "--workers", "0"]) == 0
    result = json.loads(out.read_text())
    assert (result["train"]["n"], result["test"]["n"], result["layer"]) == (48, 16, "pool5")
    assert result["train"]["top1_err"] < 0.75  # better than chance on the data's 4 classes
    assert "linear probe on pool5" in capsys.readouterr().err
    assert features.main(args[:4]) == 2  # neither --out nor --probe
    assert "either --out" in capsys.readouterr().err
