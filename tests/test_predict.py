"""alexnet.predict on real files: odd formats, EXIF orientation, a corrupt file, against the
network applied by hand in float64 to the image as PIL and torchvision prepare it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from alexnet import predict
from alexnet.config import config_from_dict
from alexnet.model import AlexNet
from alexnet.training.checkpoint import load_checkpoint

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def photos(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real files: grayscale, CMYK, PNG-named-.JPEG and RGB photos (the first
    training file of each class), a photo stored sideways and turned by its EXIF tag only, a
    truncated JPEG and a text file."""
    src, out = prepared_tiny.parent / "src" / "train", tmp_path_factory.mktemp("photos")
    for folder in sorted(src.iterdir()):
        shutil.copy(sorted(folder.iterdir())[0], out)
    (out / "nested").mkdir()
    with Image.open(sorted((src / "n90000004").iterdir())[1]) as image:
        upright = image.convert("RGB")
    upright.save(out / "nested" / "upright.png")  # lossless: the two files hold one picture
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90 degrees clockwise to display
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # stored turned anticlockwise
    sideways.save(out / "nested" / "sideways.png", exif=exif)
    with Image.open(out / "nested" / "sideways.png") as check:
        assert check.size == upright.size[::-1] and check.getexif()[0x0112] == 6
    (out / "broken.jpg").write_bytes(next(out.glob("*.JPEG")).read_bytes()[:2000])
    (out / "notes.txt").write_text("not an image")
    return out


def by_hand(checkpoint: Path, path: Path) -> torch.Tensor:
    """float64 probabilities of one file, centre crop: PIL decode, EXIF turn, torchvision's
    Resize(256) + CenterCrop(256) (bicubic, as prepare), then the centre 224 minus the mean."""
    state = load_checkpoint(checkpoint)
    with torch.device("meta"):
        model = AlexNet(config_from_dict(state["config"]).model)
    model.to_empty(device="cpu").load_state_dict(state["model"])
    with Image.open(path) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    resize = v2.Compose([v2.Resize(256, v2.InterpolationMode.BICUBIC), v2.CenterCrop(256)])
    pixels = v2.functional.pil_to_tensor(resize(rgb)).double()
    x = v2.functional.center_crop(pixels - state["data_stats"]["mean"].double(), [224])
    with torch.no_grad():
        logits = model.double().eval()(x[None])[0]
    return torch.softmax(logits, 0), logits.abs().max().item()


def test_predict_classifies_a_folder_and_names_the_bad_file(
    tiny_run: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tiny_run / "best.pt"
    args = ["--checkpoint", str(checkpoint), str(photos), "--crops", "1", "--topk", "4"]
    assert predict.main([*args, "--json", "--workers", "0"]) == 1  # 1: one file failed
    out = capsys.readouterr()
    records = {Path(r["file"]).name: r for r in json.loads(out.out)}
    readable = {p.name for p in photos.glob("*.JPEG")} | {"upright.png", "sideways.png"}
    assert len(readable) == 6 and set(records) == readable  # not broken.jpg, not notes.txt
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    classes = load_checkpoint(checkpoint)["classes"]
    for path in [*sorted(photos.glob("*.JPEG")), photos / "nested" / "sideways.png"]:
        want, scale = by_hand(checkpoint, path)
        got = {t["class"]: t["prob"] for t in records[path.name]["top"]}
        for c, p in zip(classes, want.tolist(), strict=True):  # fp32 against float64
            assert abs(got[c] - p) <= 256 * EPS32 * scale, (path.name, c)
    # EXIF orientation: the sideways file is classified exactly as the upright one
    assert records["sideways.png"]["top"] == records["upright.png"]["top"]


def test_predict_csv_file_and_bad_input(
    tiny_run: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.csv"
    image = str(next(photos.glob("*.JPEG")))
    args = ["--checkpoint", str(tiny_run / "best.pt"), image, "--csv", "--out", str(out)]
    assert predict.main([*args, "--topk", "2", "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[0]["file"] == image
    assert float(rows[0]["prob"]) >= float(rows[1]["prob"])
    assert predict.main(["--checkpoint", str(tmp_path / "none.pt"), image]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(tiny_run / "best.pt"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "no image files to classify" in err


def test_class_ids_name_the_outputs(
    tiny_run: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--class-ids (torchvision's weights come with names only): a photo in a folder named
    after a class is checked against it."""
    (tmp_path / "c").mkdir()
    shutil.copy(next(photos.glob("*.JPEG")), tmp_path / "c" / "x.jpg")
    ids = tmp_path / "ids.txt"
    ids.write_text("a first\nb second\n\nc third\nd fourth\n")
    args = ["--checkpoint", str(tiny_run / "best.pt"), str(tmp_path / "c"), "--json"]
    assert predict.main([*args, "--class-ids", str(ids), "--topk", "4"]) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)[0]
    assert record["folder_class"] == "c" and {t["class"] for t in record["top"]} == set("abcd")
    assert "the folder names a class for 1 images" in out.err
    ids.write_text("a\nb\n")
    assert predict.main([*args, "--class-ids", str(ids)]) == 2
    assert "2 ids for a network with 4 classes" in capsys.readouterr().err
