"""alexnet.synthetic: deterministic JPEG files in the ILSVRC-2012 layout, prepared end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet import prepare as prep
from alexnet import synthetic
from alexnet.data import images, packed, shapes

GT, MAP, WORDS = shapes.LABEL_FILES


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes.draw_shape_set(tmp_path_factory.mktemp("syn") / "src", 4, 6, 3, seed=5)


def test_same_seed_gives_the_same_bytes(small: Path, tmp_path: Path) -> None:
    again = _files(shapes.draw_shape_set(tmp_path / "again", 4, 6, 3, seed=5))
    assert again == _files(small)
    other = _files(shapes.draw_shape_set(tmp_path / "other", 4, 6, 3, seed=6))
    assert other.keys() == again.keys()
    images = [k for k in again if k.endswith(".JPEG")]
    assert all(other[k] != again[k] for k in images)


def test_layout_counts_and_devkit_style_labels(small: Path) -> None:
    wnids = [shapes.wnid(c) for c in range(4)]
    assert sorted(p.name for p in (small / "train").iterdir()) == wnids
    for w in wnids:
        names = sorted(p.name for p in (small / "train" / w).iterdir())
        assert names == sorted(f"{w}_{k}.JPEG" for k in range(1, 7))
    val = sorted(p.name for p in (small / "val").iterdir())
    assert val == [f"ILSVRC2012_val_{j:08d}.JPEG" for j in range(1, 13)]  # flat, 4 x 3
    ids = [int(line) for line in (small / GT).read_text().split()]
    table = [line.split() for line in (small / MAP).read_text().splitlines()]
    assert [int(row[1]) for row in table] == [1, 2, 3, 4]
    assert sorted(row[0] for row in table) == wnids and table[0][0] != wnids[0]  # scrambled IDs
    assert sorted(ids) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    words = [line.split() for line in (small / WORDS).read_text().splitlines()]
    assert words == [[w, shapes.SHAPES[c]] for c, w in enumerate(wnids)]
    sizes = {Image.open(p).size for p in small.rglob("*.JPEG")}
    assert all(shapes.SIDE[0] <= s <= shapes.SIDE[1] for size in sizes for s in size)
    assert len({round(w / h, 2) for w, h in sizes}) > 10  # varied aspect ratios


def test_three_odd_but_valid_training_files(small: Path) -> None:
    found = {}
    for path in sorted(small.rglob("*.JPEG")):
        with Image.open(path) as image:
            if (image.format, image.mode) != ("JPEG", "RGB"):
                found[str(path.relative_to(small))] = (image.format, image.mode)
    assert found == {
        f"train/{shapes.wnid(0)}/{shapes.wnid(0)}_1.JPEG": ("JPEG", "L"),
        f"train/{shapes.wnid(1)}/{shapes.wnid(1)}_1.JPEG": ("JPEG", "CMYK"),
        f"train/{shapes.wnid(2)}/{shapes.wnid(2)}_1.JPEG": ("PNG", "RGB"),
    }


def test_prepares_end_to_end_with_the_flat_val_labels(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    assert prep.main([str(small), str(out), "--workers", "1", "--encoding", "raw"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(c["was"] for c in report["converted"]) == ["CMYK", "L", "PNG"]
    assert report["counts"] == {"train": 24, "val": 12} and not report["skipped"]
    assert report["val_labels"].startswith("devkit IDs")
    # expected val order: class (via ID -> wnid -> sorted index), then file name
    id_to_wnid = {int(r.split()[1]): r.split()[0] for r in (small / MAP).read_text().splitlines()}
    ids = [int(line) for line in (small / GT).read_text().split()]
    wanted = sorted((int(id_to_wnid[i][1:]) - 90000001, j) for j, i in enumerate(ids, 1))
    val = packed.PackedSplit(out, "val")
    assert val.classes == [shapes.wnid(c) for c in range(4)]
    assert val.labels.tolist() == [label for label, _ in wanted]
    for k, (_, j) in enumerate(wanted):  # each record is the right file, not just the right count
        source = Image.open(small / "val" / f"ILSVRC2012_val_{j:08d}.JPEG").convert("RGB")
        want = np.asarray(images.resize_center_crop(source, 256))
        assert np.array_equal(val.image(k).permute(1, 2, 0).numpy(), want)


def _block(cin: int, cout: int, kernel: int, stride: int) -> list[torch.nn.Module]:
    conv = torch.nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
    return [conv, torch.nn.BatchNorm2d(cout), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]


def test_classes_are_learnable_by_a_small_convnet(tmp_path: Path) -> None:
    """A tiny CNN gets far below chance (75 % error) in 150 steps: the class signal is strong."""
    src = shapes.draw_shape_set(tmp_path / "src", 4, 40, 15, seed=1)
    assert prep.main([str(src), str(tmp_path / "prep"), "--workers", "1"]) == 0

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = packed.PackedSplit(tmp_path / "prep", split)
        x = torch.stack([data.image(i) for i in range(len(data))]).float() / 255 - 0.5
        return F.avg_pool2d(x, 4), data.labels  # 64x64

    (x, y), (xv, yv) = load("train"), load("val")
    net = torch.nn.Sequential(
        *_block(3, 16, 5, 2),
        *_block(16, 32, 3, 1),
        *_block(32, 32, 3, 1),
        torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 4),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead on a busy machine
    try:
        for _ in range(150):
            batch = torch.randint(0, len(x), (32,))
            loss = F.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            error = (net.eval()(xv).argmax(1) != yv).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert error < 0.5, error


def test_cli_writes_and_rewrites_its_own_folder_only(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    args = [str(out), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1"]
    assert synthetic.main(args) == 0
    first = _files(out)
    assert synthetic.main(args) == 0 and _files(out) == first  # an earlier set is replaced
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    assert synthetic.main([str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert synthetic.main([str(tmp_path / "x"), "--classes", "99"]) == 2
