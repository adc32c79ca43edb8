"""Ensembles in alexnet.eval: the softmax of every model and view averaged, each model with
its own stored preprocessing, against the same average computed by hand in float64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from alexnet import eval as eval_cli
from alexnet.config import config_from_dict
from alexnet.data.packed import PackedSplit
from alexnet.model import AlexNet
from alexnet.training.checkpoint import load_checkpoint, save_checkpoint


def save_variant(state: dict, path: Path) -> Path:
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    return path


@pytest.fixture(scope="module")
def pair(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """tiny_run's best.pt, and a second model: a random fc8, LRN k = 1 and a brighter stored
    mean image, so its own preprocessing differs from the first's."""
    state = load_checkpoint(tiny_run / "best.pt")
    gen = torch.Generator().manual_seed(1)
    for key in ("fc8.weight", "fc8.bias"):
        shape = state["model"][key].shape
        state["model"][key] = torch.randn(shape, generator=gen) * (0.05 if "weight" in key else 1)
    state["config"]["model"]["lrn"]["k"] = 1.0
    state["data_stats"]["mean"] = state["data_stats"]["mean"] + 20.0
    return tiny_run / "best.pt", save_variant(state, tmp_path_factory.mktemp("pair") / "b.pt")


def softmax_by_hand(checkpoint: Path, data: Path, views: int) -> torch.Tensor:
    """(N, C) float64: each image's softmax averaged over torchvision's ten crops (or centre)
    of the image minus the checkpoint's own mean image."""
    state = load_checkpoint(checkpoint)
    with torch.device("meta"):
        model = AlexNet(config_from_dict(state["config"]).model)
    model.to_empty(device="cpu").load_state_dict(state["model"])
    model.double().eval()
    mean = state["data_stats"]["mean"].double()
    split = PackedSplit(data, "val")
    crop = v2.TenCrop(224) if views == 10 else (lambda image: (v2.CenterCrop(224)(image),))
    images = [split.image(i).double() - mean for i in range(len(split))]
    crops = torch.stack([torch.stack(crop(image)) for image in images])  # (N, V, 3, 224, 224)
    with torch.no_grad():
        probs = torch.softmax(model(crops.flatten(0, 1)), dim=1)
    return probs.view(len(images), views, -1).mean(1)


def counts(probs: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[int, int]:
    """Bounds on the images whose label is in the top k: a rival within float32 rounding of
    the true class could go either way."""
    lo = hi = 0
    for p, y in zip(probs, labels.tolist(), strict=True):
        others = torch.cat([p[:y], p[y + 1 :]]).sort(descending=True).values
        rival = float(others[k - 1]) if k <= len(others) else -1.0
        tol = 1e-4 * float(p.max())
        lo += float(p[y]) > rival + tol
        hi += float(p[y]) > rival - tol
    return lo, hi


def test_ensemble_is_the_softmax_averaged_by_hand(
    pair: tuple[Path, Path], prepared_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ens.json"
    args = ["--checkpoint", *map(str, pair), "--crops", "1", "--json", str(out)]
    assert eval_cli.main([*args, "--no-progress", "--workers", "0"]) == 0
    report = json.loads(out.read_text())
    labels = PackedSplit(prepared_tiny, "val").labels
    alone = [softmax_by_hand(p, prepared_tiny, 1) for p in pair]  # ten views: test_eval.py
    assert (alone[0] - alone[1]).abs().max() > 0.1  # two really different models
    for name, probs in [*zip(map(str, pair), alone, strict=True), ("ensemble", sum(alone) / 2)]:
        got = report["results"]["1"] if name == "ensemble" else report["models"][name]["1"]
        loss = -probs[torch.arange(len(labels)), labels].log().mean().item()
        assert got["loss"] == pytest.approx(loss, rel=1e-4), name
        for k in (1, 5):
            lo, hi = counts(probs, labels, k)
            assert lo <= round(got[f"top{k}_acc"] * 16) <= hi, (name, k)


def test_ensembles_need_one_class_list(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(pair[0])
    state["classes"] = [f"other{i}" for i in range(len(state["classes"]))]
    other = save_variant(state, tmp_path / "other.pt")
    assert eval_cli.main(["--checkpoint", str(pair[0]), str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other classes" in err and len(err.splitlines()) == 1
