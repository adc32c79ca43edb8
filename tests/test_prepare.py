"""alexnet.prepare and alexnet.data.sources on real files (shared ImageNet samples, 15-Scene) and on
deliberately broken ones, checked against independent references (torchvision, numpy)."""

from __future__ import annotations

import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from alexnet import prepare as prep
from alexnet.data import pack, packed, units
from alexnet.data.shapes import SHAPES, make_image
from alexnet.data.sources import find_sources
from alexnet.errors import UserError

# sorted: tench; tusker (75x56: upscaled); Airedale (grayscale JPEG); can opener (EXIF rotation,
# ignored as by every loader). Labels are positions in this sorted list.
CLASSES = ("n01440764", "n01871265", "n02096051", "n02951585")
# file -> what report.json must say ("was" for converted files, a reason fragment for skipped)
CONVERTED = {
    "x_cmyk.JPEG": "CMYK",
    "x_png.JPEG": "PNG",
    "x_gray.JPEG": "L",
    "x_rgba.JPEG": "PNG RGBA",
    "x_palette.JPEG": "GIF P",
}
SKIPPED = {"x_truncated.JPEG": "truncated", "x_empty.JPEG": "empty", "x_text.JPEG": "not an image"}


def _sample_dir(request: pytest.FixtureRequest) -> Path | None:
    """The shared ImageNet samples, or None (then generated JPEGs stand in)."""
    try:
        return request.getfixturevalue("shared_data") / "imagenet_sample_images"
    except pytest.skip.Exception:
        return None


def _jpeg(image: Image.Image, path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def build_source(root: Path, samples: Path | None) -> Path:
    """train/<wnid>/ with 2 good images each plus every kind of odd file; val/<wnid>/ folders."""
    for c, wnid in enumerate(CLASSES):
        folder = root / "train" / wnid
        if samples is not None:
            (original,) = (samples / wnid).glob("*.JPEG")
            folder.mkdir(parents=True)
            shutil.copy(original, folder / original.name)
            image = Image.open(original).convert("RGB")
        else:
            image = make_image(np.random.default_rng([7, c]), SHAPES[c])
            _jpeg(image, folder / f"{wnid}_a.JPEG")
        _jpeg(image.transpose(Image.Transpose.ROTATE_90), folder / f"{wnid}_rot.JPEG")
        if c < 3:  # the last class has no validation images
            _jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), root / "val" / wnid / "v.JPEG")
    odd = root / "train" / CLASSES[0]
    base = make_image(np.random.default_rng(3), "star")
    _jpeg(base.convert("CMYK"), odd / "x_cmyk.JPEG")
    _jpeg(base, odd / "x_png.JPEG", "PNG")
    _jpeg(base.convert("L"), odd / "x_gray.JPEG")
    _jpeg(base.convert("RGBA"), odd / "x_rgba.JPEG", "PNG")
    _jpeg(base.convert("P"), odd / "x_palette.JPEG", "GIF")
    buf = io.BytesIO()
    base.save(buf, "JPEG")
    (odd / "x_truncated.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (odd / "x_empty.JPEG").write_bytes(b"")
    (odd / "x_text.JPEG").write_text("not a picture\n")
    (odd / "subfolder").mkdir()  # not a regular file
    (root / "train" / "stray.JPEG").write_bytes(buf.getvalue())  # outside any class folder
    return root


def expected_records(src: Path, split: str) -> list[tuple[int, Path]]:
    """(label, path) of every decodable source image in index order: class, then file name."""
    folder = src / ("train" if split == "train" else "val")
    records = []
    for label, wnid in enumerate(CLASSES):
        files = sorted(p for p in (folder / wnid).glob("*") if p.is_file())
        records += [(label, p) for p in files if p.name not in SKIPPED]
    return records


def reference(path: Path) -> np.ndarray:
    """Independent §2 preprocessing: torchvision Resize(256) + CenterCrop(256) on the PIL image."""
    image = Image.open(path).convert("RGB")
    image = TF.center_crop(TF.resize(image, 256, InterpolationMode.BICUBIC, antialias=True), 256)
    return np.asarray(image)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return build_source(tmp_path_factory.mktemp("src"), _sample_dir(request))


@pytest.fixture(scope="module", params=["jpeg", "raw"])
def prepared(request: pytest.FixtureRequest, source: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "prepared"
    args = [str(source), str(out), "--workers", "1", "--encoding", request.param]
    assert prep.main(args) == 0
    return out


def test_report_lists_every_converted_skipped_and_odd_file(prepared: Path) -> None:
    report = json.loads((prepared / "report.json").read_text())
    converted = {Path(c["file"]).name: c["was"] for c in report["converted"]}
    assert {k: converted[k] for k in CONVERTED} == CONVERTED
    skipped = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == set(SKIPPED)
    for name, fragment in SKIPPED.items():
        assert fragment in skipped[name]
    assert report["not_regular_files"] == [f"train/{CLASSES[0]}/subfolder"]
    (unknown,) = report["unknown_class_files"]
    assert unknown.startswith("train/stray.JPEG")
    assert report["missing_classes"] == {"train": [], "val": [CLASSES[3]]}
    assert report["count_check"]["train"]["ok"] and report["count_check"]["val"]["ok"]
    assert report["count_check"]["train"]["skipped"] == len(SKIPPED)


def test_stored_images_equal_an_independent_resize_and_centre_crop(prepared: Path, source: Path):
    meta = packed.read_meta(prepared)
    for split in ("train", "val"):
        data = packed.PackedSplit(prepared, split)
        records = expected_records(source, split)
        assert data.labels.tolist() == [label for label, _ in records]
        for i, (_, path) in enumerate(records):
            image = data.image(i)
            assert image.shape == (3, 256, 256) and image.dtype == torch.uint8
            got = image.permute(1, 2, 0).numpy().astype(np.int16)
            want = reference(path)
            if meta["encoding"] == "raw":
                assert np.array_equal(got, want), path.name
            else:  # JPEG q95, 4:4:4: PSNR > 34 dB, no bias, closer than a 1-pixel shift
                rmse = np.sqrt(np.mean((got - want) ** 2.0))
                shifted = np.sqrt(np.mean((got[:, 1:] - want[:, :-1]) ** 2.0))
                assert rmse < 5 and rmse < shifted and abs((got - want).mean()) < 0.5, path.name


def test_mean_image_and_covariance_equal_numpy_on_the_stored_pixels(prepared: Path) -> None:
    data = packed.PackedSplit(prepared, "train")
    images = np.stack([data.image(i).numpy() for i in range(len(data))]).astype(np.float64)
    stats = packed.load_stats(prepared)
    np.testing.assert_allclose(stats.mean, images.mean(0), rtol=0, atol=1e-9)
    pixels = images.transpose(0, 2, 3, 1).reshape(-1, 3)
    cov = np.cov(pixels, rowvar=False)
    np.testing.assert_allclose(stats.cov, cov, rtol=1e-9)
    assert stats.pixels == len(pixels)
    eigval, eigvec = np.linalg.eigh(cov)
    np.testing.assert_allclose(stats.eigval, eigval[::-1], rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(stats.eigvec * eigvec[:, ::-1], 0)), 1, atol=1e-9)


def test_index_records_tile_each_shard_exactly(prepared: Path) -> None:
    meta = packed.read_meta(prepared)
    for split, entry in meta["splits"].items():
        index = np.load(prepared / split / "index.npy")
        assert index.dtype == np.int64 and index.shape == (entry["count"], 5)
        for k, shard in enumerate(entry["shards"]):
            rows = index[index[:, 0] == k]
            assert len(rows) and (rows[:, 1] == np.cumsum(rows[:, 2]) - rows[:, 2]).all()
            data = (prepared / shard).read_bytes()
            assert rows[:, 2].sum() == len(data)
            # the last column is each record's CRC-32, computed here from the shard's bytes
            crcs = [zlib.crc32(data[o : o + n]) for o, n in rows[:, 1:3].tolist()]
            assert rows[:, 4].tolist() == crcs


def test_sets_prepared_before_checksums_still_load(prepared: Path, tmp_path: Path) -> None:
    """A version-1 folder (four index columns, no checksum) reads as before, unchecked."""
    old = tmp_path / "v1"
    shutil.copytree(prepared, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    for split in meta["splits"]:
        np.save(old / split / "index.npy", np.load(old / split / "index.npy")[:, :4])
    before, now = packed.PackedSplit(old, "train"), packed.PackedSplit(prepared, "train")
    assert not before.has_checksums and before.checksum(0) is None
    assert now.has_checksums and now.checksum(0) == zlib.crc32(now.raw(0).numpy().tobytes())
    assert torch.equal(before.image(3), now.image(3))
    (old / "meta.json").write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(UserError, match="version 3"):
        packed.PackedSplit(old, "train")


def _flat_val_source(root: Path, meta: Path, n: int = 12) -> tuple[Path, list[str], str]:
    """Train folders for the classes of val images 1..n, a flat val/ of n+1 images (the last of a
    class without a train folder); returns the root, their wnids (from Caffe's val.txt) and the
    extra file's name."""
    synsets = [line.split()[0] for line in (meta / "synset_words.txt").read_text().splitlines()]
    caffe = (meta / "val_caffe.txt").read_text().splitlines()
    wnids = [synsets[int(line.split()[1])] for line in caffe]
    extra = next(k for k in range(n, len(wnids)) if wnids[k] not in wnids[:n])
    small = make_image(np.random.default_rng(0), "circle").resize((40, 30))
    for k in [*range(n), extra]:
        if k < n:
            _jpeg(small, root / "train" / wnids[k] / "a.JPEG")
        _jpeg(small, root / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG")
    return root, wnids[:n], f"ILSVRC2012_val_{extra + 1:08d}.JPEG"


@pytest.mark.parametrize("kind", ["devkit", "kaggle", "caffe", "wnid_lines"])
def test_flat_val_labels_map_to_sorted_wnid_indices(kind: str, tmp_path: Path, shared_data: Path):
    meta = shared_data / "imagenet_meta"
    src, wnids, extra = _flat_val_source(tmp_path / "src", meta)
    files = {
        "devkit": dict(
            val_labels=meta / "ILSVRC2012_validation_ground_truth.DERIVED.txt",
            id_map=meta / "ILSVRC2012_id_wnid_name.txt",
        ),
        "kaggle": dict(val_labels=meta / "LOC_val_solution_wnid_only.csv"),
        "caffe": dict(val_labels=meta / "val_caffe.txt", class_list=meta / "synset_words.txt"),
        "wnid_lines": dict(val_labels=meta / "val_wnids.DERIVED.txt"),  # TF-slim's form
    }[kind]
    plan = find_sources(src, **files)
    classes = sorted(set(wnids))
    val = [item for item in plan.items if item.split == "val"]
    got = {Path(item.name).name: plan.classes[item.label] for item in val}
    assert plan.classes == classes
    assert got == {f"ILSVRC2012_val_{k + 1:08d}.JPEG": w for k, w in enumerate(wnids)}
    assert [u.split(":")[0] for u in plan.unknown] == [f"val/{extra}"]
    sources = {"devkit": "devkit", "kaggle": "Kaggle", "caffe": "Caffe", "wnid_lines": "one wnid"}
    assert plan.val_source.startswith(sources[kind])


def test_flat_val_with_devkit_files_found_beside_it_prepares(tmp_path: Path, shared_data: Path):
    meta = shared_data / "imagenet_meta"
    src, wnids, _ = _flat_val_source(tmp_path / "src", meta, n=6)
    shutil.copy(meta / "ILSVRC2012_validation_ground_truth.DERIVED.txt", src)
    shutil.copy(meta / "ILSVRC2012_id_wnid_name.txt", src / "map_clsloc.txt")
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1"]) == 0
    val = packed.PackedSplit(tmp_path / "out", "val")
    # the index is sorted by class, then file name: val images 1..6 in that order
    expected = sorted((sorted(set(wnids)).index(w), k) for k, w in enumerate(wnids))
    assert val.labels.tolist() == [label for label, _ in expected]
    assert val.classes == sorted(set(wnids))


def test_flat_val_without_labels_is_one_clear_error(tmp_path: Path, capsys) -> None:
    image = make_image(np.random.default_rng(0), "circle")
    _jpeg(image, tmp_path / "src" / "train" / "n00000001" / "a.JPEG")
    _jpeg(image, tmp_path / "src" / "val" / "ILSVRC2012_val_00000001.JPEG")
    assert prep.main([str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--val-labels" in err and err.count("\n") == 1
    (tmp_path / "src" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    assert prep.main([str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "--id-map" in capsys.readouterr().err
    assert not (tmp_path / "out" / "meta.json").exists()


def _unit_files(out: Path) -> dict[str, int]:
    files = [p for p in out.glob("*/*") if units.UNIT_FILE.fullmatch(p.name)]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def test_resume_redoes_only_unfinished_units(source: Path, tmp_path: Path, monkeypatch) -> None:
    common = ["--workers", "1", "--unit-size", "2"]
    assert prep.main([str(source), str(tmp_path / "whole"), *common]) == 0
    out = tmp_path / "resumed"
    real, calls = pack.run_unit, []

    def crash_on_fourth(job):
        calls.append(job[2].stem)
        if len(calls) == 4:  # killed midway: only a partial temporary file is left behind
            stem = Path(job[2].stem)
            tmp = out / stem.parent / f".{stem.name}.bin.0123456789ab.tmp"
            tmp.write_bytes(b"half a shard")
            raise RuntimeError("simulated crash")
        return real(job)

    monkeypatch.setattr(pack, "run_unit", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prep.main([str(source), str(out), *common])
    monkeypatch.setattr(pack, "run_unit", real)
    with pytest.raises(UserError, match="no meta.json"):
        packed.read_meta(out)
    finished = _unit_files(out)
    assert len(finished) == 6  # three units, .bin + .npz each
    lost = sorted(k for k in finished if k.endswith(".npz"))[0]  # crash between .bin and .npz
    (out / lost).unlink()
    del finished[lost], finished[lost.replace(".npz", ".bin")]

    assert prep.main([str(source), str(out), *common]) == 0
    after = _unit_files(out)
    assert {k: after[k] for k in finished} == finished  # finished units were not rewritten
    assert not list(out.glob("*/*.tmp"))
    for name in ("train/index.npy", "val/index.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(tmp_path / "whole" / name))
    for shard in packed.read_meta(out)["splits"]["train"]["shards"]:
        assert (out / shard).read_bytes() == (tmp_path / "whole" / shard).read_bytes()
    whole = packed.load_stats(tmp_path / "whole")
    np.testing.assert_array_equal(packed.load_stats(out).cov, whole.cov)
    assert prep.main([str(source), str(out), *common]) == 0  # a finished folder: nothing redone
    assert _unit_files(out) == after


def test_scene15_grayscale_prepares_with_test_as_val(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "scene15"
    outs = [tmp_path / "one", tmp_path / "two"]
    for out, workers in zip(outs, ("1", "2"), strict=True):
        assert prep.main([str(src), str(out), "--limit-per-class", "2", "--workers", workers]) == 0
    for split in ("train", "val"):  # the process pool writes the same bytes as one process
        np.testing.assert_array_equal(
            np.load(outs[0] / split / "index.npy"), np.load(outs[1] / split / "index.npy")
        )
    classes = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    report = json.loads((outs[1] / "report.json").read_text())
    assert report["counts"] == {"train": 2 * len(classes), "val": 2 * len(classes)}
    assert {c["was"] for c in report["converted"]} == {"L"}
    assert "test/" in report["val_labels"]
    for split in ("train", "val"):
        data = packed.PackedSplit(outs[1], split)
        assert data.classes == classes and data.labels.tolist() == sorted(data.labels.tolist())
        image = data.image(len(data) - 1)
        assert image.shape == (3, 256, 256) and image.dtype == torch.uint8
        assert (image.int().amax(0) - image.int().amin(0)).max() <= 2  # still gray after JPEG


def test_imagenet_expectation_reports_what_is_missing(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    for k in range(1000):
        (src / "train" / f"n{k:08d}").mkdir(parents=True)
    _jpeg(make_image(np.random.default_rng(0), "ring"), src / "train" / "n00000000" / "a.JPEG")
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1"]) == 0
    problems = json.loads((tmp_path / "out" / "report.json").read_text())["imagenet_check"]
    assert "train: 1 images, expected 1,281,167" in problems
    assert any(p.startswith("train: 999 classes have no images: n00000001") for p in problems)
    assert "warning: not the ILSVRC-2012 release" in capsys.readouterr().err
    assert prep.main([str(src), str(tmp_path / "out"), "--limit-per-class", "1"]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["imagenet_check"] is None


LAYOUTS = ["missing", "no_train", "empty_classes", "foreign_out", "quality"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bad_input_exits_2_with_one_message(layout: str, tmp_path: Path, capsys) -> None:
    src, out, extra = tmp_path / "src", tmp_path / "out", []
    if layout != "missing":
        (src / "images").mkdir(parents=True)
    if layout in ("empty_classes", "foreign_out", "quality"):
        (src / "train" / "a").mkdir(parents=True)
    if layout in ("foreign_out", "quality"):
        _jpeg(make_image(np.random.default_rng(0), "ring"), src / "train" / "a" / "x.JPEG")
    if layout == "foreign_out":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"")
    if layout == "quality":
        extra = ["--quality", "0"]
    assert prep.main([str(src), str(out), *extra]) == 2
    err = capsys.readouterr().err
    expected = {
        "missing": "does not exist",
        "no_train": "has no train/",
        "quality": "--quality",
        "foreign_out": "not empty",
        "empty_classes": "no files",
    }[layout]
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_changed_settings_redo_every_unit(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prep.main([str(source), str(out), "--workers", "1", "--limit-per-class", "1"]) == 0
    before = _unit_files(out)
    assert prep.main([str(source), str(out), "--workers", "1", "--encoding", "raw"]) == 0
    after = _unit_files(out)
    assert all(after[k] != before[k] for k in before)  # --limit and --encoding are in the signature
    data = packed.PackedSplit(out, "train")
    assert data.encoding == "raw" and len(data) == len(expected_records(source, "train"))


def test_kaggle_layout_and_csv_are_found_without_flags(tmp_path: Path) -> None:
    root = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid in ("n02000000", "n01000000"):
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_1.JPEG").write_bytes(b"")
    (root / "val").mkdir()
    for k in (1, 2, 3):
        (root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG").write_bytes(b"")
    rows = [
        "ImageId,PredictionString",
        "ILSVRC2012_val_00000002,n01000000 1 2 3 4",
        "ILSVRC2012_val_00000001,n02000000 5 6 7 8 n02000000 1 1 2 2",
    ]
    (tmp_path / "kaggle" / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    plan = find_sources(tmp_path / "kaggle")
    assert plan.root == root and plan.classes == ["n01000000", "n02000000"]
    val = [(item.label, item.name) for item in plan.items if item.split == "val"]
    assert val == [(0, "val/ILSVRC2012_val_00000002.JPEG"), (1, "val/ILSVRC2012_val_00000001.JPEG")]
    assert plan.unknown == ["val/ILSVRC2012_val_00000003.JPEG: no label in LOC_val_solution.csv"]
