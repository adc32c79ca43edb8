"""alexnet.eval against a direct computation on the same logits, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import argv
from torchvision.transforms import v2

from alexnet import eval as eval_cli
from alexnet import train
from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.config import config_from_dict
from alexnet.data.packed import PackedSplit
from alexnet.model import build_model


@pytest.fixture(scope="module")
def trained(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "run"
    assert train.main(argv(prepared_tiny, run, "train.epochs=1", "train.checkpoint_every=0")) == 0
    return run / "best.pt"


def direct_errors(ckpt: Path, data: Path, views: int) -> tuple[float, float]:
    """Top-1/top-5 error computed independently: torchvision crops, a plain loop, no loaders."""
    state = load_checkpoint(ckpt)
    model = build_model(config_from_dict(state["config"]).model)
    model.load_state_dict(state["model"])
    model.eval()
    mean = state["data_stats"]["mean"].double()
    split = PackedSplit(data, "val")
    top1 = top5 = 0
    for i in range(len(split)):
        image = split.image(i).double() - mean  # subtract the mean image, then crop (§2)
        crops = v2.TenCrop(224)(image) if views == 10 else (v2.CenterCrop(224)(image),)
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(crops).float()), dim=1).mean(0)
        ranked = probs.argsort(descending=True).tolist()
        label = int(split.labels[i])
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    n = len(split)
    return (n - top1) / n, (n - top5) / n


def test_eval_json_equals_a_direct_computation(
    trained: Path, prepared_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    assert (
        eval_cli.main(
            [
                "--checkpoint",
                str(trained),
                "--json",
                str(out),
                "--no-progress",
                "--workers",
                "0",
                "--crops",
                "1",
                "--crops",
                "10",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["images"] == 16 and report["split"] == "val"
    for views in (1, 10):
        got = report["results"][str(views)]
        top1, top5 = direct_errors(trained, prepared_tiny, views)
        assert got["n"] == 16
        assert got["top1_err"] == pytest.approx(top1) and got["top5_err"] == pytest.approx(top5)
        assert got["top1_acc"] == pytest.approx(1 - top1)


def test_eval_reads_its_config_from_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.json"
    assert (
        eval_cli.main(
            [
                "--checkpoint",
                str(trained),
                "--crops",
                "1",
                "--json",
                str(out),
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert list(json.loads(out.read_text())["results"]) == ["1"]


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
