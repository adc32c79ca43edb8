"""alexnet.export: the saved torch.export program gives the network's logits for raw 0-255
crops (its preprocessing inside), against the network applied by hand in float64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from alexnet import export
from alexnet.config import config_from_dict
from alexnet.data.packed import PackedSplit
from alexnet.model import AlexNet
from alexnet.training.checkpoint import load_checkpoint

from conftest import assert_close_to_f64


def test_exported_program_gives_the_models_logits(
    tiny_run: Path, prepared_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiny.pt2"
    assert export.main(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(out)]) == 0
    extra = {"classes.json": ""}
    program = torch.export.load(out, extra_files=extra)
    assert not [n for n in program.graph.nodes if "alexnet" in str(n.target)]  # torch ops only
    state = load_checkpoint(tiny_run / "best.pt")
    assert json.loads(extra["classes.json"])["classes"] == state["classes"]
    with torch.device("meta"):
        model = AlexNet(config_from_dict(state["config"]).model)
    model.to_empty(device="cpu").load_state_dict(state["model"])
    model.double().eval()
    mean = v2.CenterCrop(224)(state["data_stats"]["mean"].double())
    split = PackedSplit(prepared_tiny, "val")
    crops = torch.stack([v2.CenterCrop(224)(split.image(i)) for i in range(3)])  # uint8
    with torch.no_grad():
        want = model(crops.double() - mean)  # the paper's test-time dropout x0.5 included
        for batch in (crops, crops[:1]):  # any batch size
            assert_close_to_f64(program.module()(batch.float()), want[: len(batch)])


def test_torchvision_export_refuses_what_torchvision_cannot_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--checkpoint", str(tiny_run / "best.pt"), "--torchvision", str(tmp_path / "tv.pth")]
    assert export.main([*args, "--out", str(tmp_path / "x.pt2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: torchvision's AlexNet cannot run this model")
    assert not list(tmp_path.iterdir())  # nothing written
