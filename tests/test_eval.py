"""alexnet.eval against a direct computation on the same logits, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from alexnet import eval as eval_cli
from alexnet.config import ModelConfig
from alexnet.data.packed import PackedSplit
from alexnet.model import AlexNet
from alexnet.training.checkpoint import load_checkpoint, save_checkpoint

from conftest import model_cfg


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> Path:
    return tiny_run / "best.pt"


def direct_eval(state: dict, model_cfg: ModelConfig, data: Path, views: int) -> dict[str, float]:
    """An independent reference in float64: torchvision crops of each image, one at a time.

    Returns the loss and, for top-1 and top-5, bounds on the number of correct images: an image
    whose decisive probabilities differ by less than float32 rounding could go either way.
    """
    with torch.device("meta"):
        model = AlexNet(model_cfg)
    model.to_empty(device="cpu").load_state_dict(state["model"])
    model.double().eval()
    mean = state["data_stats"]["mean"].double()
    split = PackedSplit(data, "val")
    out = {"loss": 0.0, "top1_lo": 0, "top1_hi": 0, "top5_lo": 0, "top5_hi": 0}
    for i in range(len(split)):
        image = split.image(i).double() - mean  # subtract the mean image, then crop (§2)
        crops = v2.TenCrop(224)(image) if views == 10 else (v2.CenterCrop(224)(image),)
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(crops)), dim=1).mean(0)  # §4.1
        label = int(split.labels[i])
        out["loss"] -= float(probs[label].log()) / len(split)
        others = torch.cat([probs[:label], probs[label + 1 :]]).sort(descending=True).values
        tol = 1e-4 * float(probs.max())  # far above float32 rounding of a softmax
        for k in (1, 5):
            rival = float(others[k - 1]) if k <= len(others) else -1.0
            out[f"top{k}_lo"] += float(probs[label]) > rival + tol
            out[f"top{k}_hi"] += float(probs[label]) > rival - tol
    return out


def check_against_direct(got: dict, ref: dict, n: int) -> None:
    assert got["n"] == n
    for k in (1, 5):
        correct = round(got[f"top{k}_acc"] * n)
        assert ref[f"top{k}_lo"] <= correct <= ref[f"top{k}_hi"], (k, got, ref)
        assert got[f"top{k}_err"] == pytest.approx(1 - correct / n)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-4)


def test_eval_json_equals_a_direct_computation(
    trained: Path, prepared_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    args = ["--checkpoint", str(trained), "--json", str(out), "--no-progress", "--workers", "0"]
    assert eval_cli.main([*args, "--crops", "1", "--crops", "10"]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 16 and report["split"] == "val"
    state = load_checkpoint(trained)
    for views in (1, 10):
        ref = direct_eval(state, model_cfg("num_classes=4"), prepared_tiny, views)
        check_against_direct(report["results"][str(views)], ref, 16)


def test_eval_reads_its_config_from_the_checkpoint(
    trained: Path, prepared_tiny: Path, tmp_path: Path
) -> None:
    """A checkpoint whose stored config says LRN k = 1 and one view is evaluated that way,
    with nothing on the command line but the checkpoint."""
    state = load_checkpoint(trained)
    state["config"]["model"]["lrn"]["k"] = 1.0
    state["config"]["eval"]["views"] = 1
    other = tmp_path / "k1.pt"
    save_checkpoint(other, {k: v for k, v in state.items() if k not in ("format", "version")})
    out = tmp_path / "one.json"
    args = ["--checkpoint", str(other), "--json", str(out), "--no-progress", "--workers", "0"]
    assert eval_cli.main(args) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["1"]  # eval.views from the checkpoint
    k1 = direct_eval(state, model_cfg("num_classes=4", "lrn.k=1"), prepared_tiny, 1)
    k2 = direct_eval(state, model_cfg("num_classes=4"), prepared_tiny, 1)
    assert k1["loss"] != pytest.approx(k2["loss"], rel=1e-3)  # the two configs are told apart
    check_against_direct(results["1"], k1, 16)


def test_bad_checkpoints_are_one_clear_error(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(2)}, foreign)
    cases = {
        tmp_path / "missing.pt": "does not exist",
        truncated: "not a readable checkpoint",
        foreign: "not an alexnet checkpoint",
    }
    for path, message in cases.items():
        assert eval_cli.main(["--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_wrong_data_folder_is_one_clear_error(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eval_cli.main(["--checkpoint", str(trained), "--data", str(tmp_path)]) == 2
    assert "not a prepared data set" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_stored_config(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(trained)
    state["model"]["fc8.weight"] = torch.zeros(3, 4096)
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {k: v for k, v in state.items() if k not in ("format", "version")})
    assert eval_cli.main(["--checkpoint", str(bad)]) == 2
    assert "weights do not fit its own config" in capsys.readouterr().err
