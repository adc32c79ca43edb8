"""prepare from ILSVRC-2012 as downloaded: mock official archives built here (a tar of class
tars, a flat validation tar, a devkit .tar.gz whose meta.mat scipy writes), prepared in place and
compared byte for byte with the same images prepared from folders that tarfile extracted; and
every bad input (truncated, foreign, no devkit, full disk) as one error line and a rerun that
finishes."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet import atomic
from alexnet import prepare as prep
from alexnet.data import archives, devkit, tars
from alexnet.data.shapes import draw_shape_set
from alexnet.errors import UserError

OFFICIAL = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar"}
OFFICIAL["devkit"] = "ILSVRC2012_devkit_t12.tar.gz"
TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
OPTS = ["--workers", "1", "--unit-size", "4"]  # several units per class: chunks, resume
# report.json fields that name where the images came from; every other field must agree
NAMING = ("source", "val_labels", "class_names")
EXTS = (".bin", ".npz")


# --- mock downloads -----------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_300_000_000
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    """A class tar as `tar -C folder .` writes it: a ./ entry first, then ./<file> members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folder = tarfile.TarInfo("./")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files:
            _add(tar, f"./{name}", data)
    return buf.getvalue()


def write_downloads(
    folder: Path, train: dict[str, list[tuple[str, bytes]]], val: list[tuple[str, bytes]],
    truth: str, meta: bytes | None,
) -> dict[str, Path]:  # fmt: skip
    """The three downloads under their official names; class tars hold their files in reverse
    name order, so the prepared order cannot come from the archive's order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name for kind, name in OFFICIAL.items()}
    with tarfile.open(paths["train"], "w") as tar:
        for wnid, files in train.items():
            _add(tar, f"{wnid}.tar", _tar_bytes(sorted(files, reverse=True)))
    with tarfile.open(paths["val"], "w") as tar:
        for name, data in val:
            _add(tar, name, data)
    with tarfile.open(paths["devkit"], "w:gz") as tar:
        _add(tar, TRUTH, truth.encode())
        if meta is not None:
            _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta)
    return paths


def meta_mat(rows: list[tuple[int, str, str]]) -> bytes:
    """A devkit meta.mat: the `synsets` struct array of the real one (IDs and counts as
    doubles), the classes as leaves and two inner WordNet nodes after them."""
    savemat = pytest.importorskip("scipy.io").savemat
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children"]
    fields += ["wordnet_height", "num_train_images"]
    synsets = np.zeros(len(rows) + 2, dtype=[(f, object) for f in fields])
    for k, (number, wnid, words) in enumerate(rows):
        synsets[k] = (float(number), wnid, words, "a class", 0.0, np.zeros(0), 0.0, 1300.0)
    top = len(rows) + 1  # the inner nodes: entity (top) -> object (top + 1) -> the classes
    children = np.arange(1.0, top)
    synsets[-2] = (float(top), "n00001740", "entity", "", 1.0, np.array([top + 1.0]), 2.0, 0.0)
    synsets[-1] = (top + 1.0, "n00002684", "object", "", float(len(rows)), children, 1.0, 0.0)
    buf = io.BytesIO()
    savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def extract(paths: dict[str, Path], dest: Path) -> Path:
    """What people did before: tarfile extracts train/<wnid>/ from every class tar, and val/."""
    with tarfile.open(paths["train"]) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                inner.extractall(dest / "train" / member.name[:-4], filter="data")
    with tarfile.open(paths["val"]) as tar:
        tar.extractall(dest / "val", filter="data")
    return dest


# --- fixtures: the shape set as downloads, prepared from its folders ----------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The built-in set (3 classes x 6 train, 2 val each; a grayscale, a CMYK and a PNG named
    .JPEG among them) as the three downloads, and as folders extracted from them."""
    base = tmp_path_factory.mktemp("shapes")
    src = draw_shape_set(base / "drawn", num_classes=3, train_per_class=6, val_per_class=2)
    train = {
        d.name: [(f.name, f.read_bytes()) for f in sorted(d.iterdir())]
        for d in sorted((src / "train").iterdir())
    }
    val = [(f.name, f.read_bytes()) for f in sorted((src / "val").iterdir())]
    words = dict(line.split(" ", 1) for line in (src / "synset_words.txt").read_text().splitlines())
    table = [line.split() for line in (src / "map_clsloc.txt").read_text().splitlines()]
    rows = [(int(number), wnid, words[wnid]) for wnid, number, _ in table]
    truth = (src / "ILSVRC2012_validation_ground_truth.txt").read_text()
    paths = write_downloads(base / "downloads", train, val, truth, meta_mat(rows))
    folders = extract(paths, base / "extracted")
    for name in ("ILSVRC2012_validation_ground_truth.txt", "map_clsloc.txt", "synset_words.txt"):
        shutil.copy(src / name, folders / name)  # the labels, as a flat val/ folder needs them
    return {**paths, "folders": folders, "base": base}


@pytest.fixture(scope="module")
def reference(shapes: dict[str, Path]) -> Path:
    """The shape set prepared from the extracted folders."""
    out = shapes["base"] / "from-folders"
    assert prep.main([str(shapes["folders"]), str(out), *OPTS]) == 0
    return out


def assert_same_output(got: Path, want: Path) -> None:
    """Shards, index, stats and meta byte for byte; report.json but for the naming fields."""
    meta = json.loads((want / "meta.json").read_text())
    files = ["meta.json", "stats.npz"] + [f"{split}/index.npy" for split in meta["splits"]]
    files += [shard for entry in meta["splits"].values() for shard in entry["shards"]]
    for name in files:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    reports = [json.loads((d / "report.json").read_text()) for d in (got, want)]
    for report in reports:
        for key in NAMING:
            del report[key]
    assert reports[0] == reports[1]


def run_prepare(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = prep.main([str(a) for a in args])
    return code, capsys.readouterr().err


# --- the archives, prepared in place ------------------------------------------------------------


@pytest.mark.parametrize("form", ["files", "reversed", "folder", "two_workers"])
def test_archives_prepare_byte_identical_to_extracted_folders(
    form: str, shapes: dict[str, Path], reference: Path, tmp_path: Path, monkeypatch
) -> None:
    files = [shapes["train"], shapes["val"], shapes["devkit"]]
    sources = {
        "files": files,
        "reversed": files[::-1],
        "folder": [shapes["train"].parent],
        "two_workers": files,
    }[form]
    opts = ["--workers", "2", "--unit-size", "4"] if form == "two_workers" else OPTS
    monkeypatch.setattr(archives, "LIST_IN_PARALLEL", 0)  # two workers list the class tars too
    assert prep.main([*map(str, sources), str(tmp_path / "out"), *opts]) == 0
    assert_same_output(tmp_path / "out", reference)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["source"] == f"{shapes['train']} + {shapes['val']}"
    assert report["val_labels"] == "devkit IDs (ILSVRC2012_validation_ground_truth.txt + meta.mat)"
    assert {c["was"] for c in report["converted"]} == {"L", "CMYK", "PNG"}


def test_kaggles_folder_prepares_the_same(
    shapes: dict[str, Path], reference: Path, tmp_path: Path
) -> None:
    """Kaggle's copy: ILSVRC/Data/CLS-LOC/{train,val}, LOC_val_solution.csv (wnid first) and
    LOC_synset_mapping.txt, found without flags."""
    folders, kaggle = shapes["folders"], tmp_path / "kaggle"
    root = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    shutil.copytree(folders / "train", root / "train")
    shutil.copytree(folders / "val", root / "val")
    ids = {int(n): w for w, n, _ in (ln.split() for ln in open(folders / "map_clsloc.txt"))}
    truth = (folders / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    rows = [f"ILSVRC2012_val_{k:08d},{ids[int(n)]} 1 2 3 4" for k, n in enumerate(truth, 1)]
    (kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    shutil.copy(folders / "synset_words.txt", kaggle / "LOC_synset_mapping.txt")
    assert prep.main([str(kaggle), str(tmp_path / "out"), *OPTS]) == 0
    assert_same_output(tmp_path / "out", reference)


def test_nothing_is_extracted_and_the_class_words_come_from_meta_mat(
    shapes: dict[str, Path], tmp_path: Path
) -> None:
    before = sorted(p.name for p in shapes["train"].parent.iterdir())
    out = tmp_path / "out"
    assert prep.main([str(shapes["train"].parent), str(out), *OPTS, "--limit-per-class", "2"]) == 0
    assert sorted(p.name for p in shapes["train"].parent.iterdir()) == before
    made = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert all(name.endswith((".bin", ".npz", ".npy", ".json")) for name in made)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == ["circle", "square", "triangle"]
    assert meta["splits"]["train"]["count"] == 3 * 2 and meta["splits"]["val"]["count"] == 6


def test_real_photos_from_archives_equal_folders(shared_data: Path, tmp_path: Path) -> None:
    """Ten real ImageNet photos (plus a CMYK copy, a PNG named .JPEG, a cut JPEG and an empty
    file) as downloads whose meta.mat holds the shipped 1,000-row table; the extracted folders
    are labelled by the independent shared map_clsloc and synset_words files instead."""
    samples, meta = shared_data / "imagenet_sample_images", shared_data / "imagenet_meta"
    wnids = sorted(p.name for p in samples.iterdir() if p.is_dir())[::100]
    photos = {w: next((samples / w).glob("*.JPEG")).read_bytes() for w in wnids}
    train = {w: [(f"{w}_{k}.JPEG", data) for k in (1, 2)] for w, data in photos.items()}
    image = Image.open(io.BytesIO(photos[wnids[0]]))
    for fmt, mode, name in (("JPEG", "CMYK", "cmyk"), ("PNG", "RGB", "png")):
        buf = io.BytesIO()
        image.convert(mode).save(buf, fmt)
        train[wnids[0]].append((f"{wnids[0]}_{name}.JPEG", buf.getvalue()))
    train[wnids[1]] += [(f"{wnids[1]}_cut.JPEG", photos[wnids[1]][:5000]), ("empty.JPEG", b"")]
    ids = {
        line.split()[0]: int(line.split()[1]) for line in open(meta / "ILSVRC2012_id_wnid_name.txt")
    }
    order = wnids[::-1]  # val image k is a mirror image of the photo of class order[k - 1]
    val = []
    for k, w in enumerate(order, 1):
        buf = io.BytesIO()
        Image.open(io.BytesIO(photos[w])).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            buf, "JPEG"
        )
        val.append((f"ILSVRC2012_val_{k:08d}.JPEG", buf.getvalue()))
    truth = "".join(f"{ids[w]}\n" for w in order)
    shipped = devkit.shipped_table()
    rows = [(n, w, shipped.words[w]) for n, w in sorted(shipped.ids.items())]
    paths = write_downloads(tmp_path / "dl", train, val, truth, meta_mat(rows))
    folders = extract(paths, tmp_path / "extracted")
    (folders / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)
    labels = [
        "--id-map",
        meta / "ILSVRC2012_id_wnid_name.txt",
        "--class-words",
        meta / "synset_words.txt",
    ]
    assert prep.main([str(a) for a in [folders, tmp_path / "want", *labels, *OPTS]]) == 0
    assert prep.main([str(a) for a in [*paths.values(), tmp_path / "got", *OPTS]]) == 0
    assert_same_output(tmp_path / "got", tmp_path / "want")
    report = json.loads((tmp_path / "got" / "report.json").read_text())
    assert sorted(c["was"] for c in report["converted"]) == ["CMYK", "PNG"]
    assert sorted(s["file"] for s in report["skipped"]) == [
        f"train/{wnids[1]}/empty.JPEG",
        f"train/{wnids[1]}/{wnids[1]}_cut.JPEG",
    ]
    assert json.loads((tmp_path / "got" / "meta.json").read_text())["class_names"][0] == (
        "tench, Tinca tinca"
    )


# --- labels: the shipped table, meta.mat -------------------------------------------------------


def test_shipped_table_is_the_shared_devkit_table(shared_data: Path) -> None:
    meta = shared_data / "imagenet_meta"
    table = devkit.shipped_table()
    pairs = [line.split()[:2] for line in open(meta / "ILSVRC2012_id_wnid_name.txt")]
    assert table.ids == {int(number): wnid for wnid, number in pairs}
    words = [line.rstrip("\n").split(" ", 1) for line in open(meta / "synset_words.txt")]
    assert table.words == dict(words)


def _devkit_file(tmp_path: Path, rows: list[tuple[int, str, str]] | None, truth: str) -> Path:
    path = tmp_path / OFFICIAL["devkit"]
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, TRUTH, truth.encode())
        if rows is not None:
            _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(rows))
    return path


def test_meta_mat_classes_are_its_leaves(tmp_path: Path) -> None:
    rows = [(1, "n02119789", "kit fox, Vulpes macrotis"), (2, "n02100735", "English setter")]
    kit = devkit.read_devkit(_devkit_file(tmp_path, rows, "2\n1\n2\n"))
    assert kit.table.ids == {1: "n02119789", 2: "n02100735"}  # not the two inner nodes
    assert kit.table.words["n02100735"] == "English setter" and not kit.unread
    assert kit.ground_truth.by_number == {1: 2, 2: 1, 3: 2}


def test_meta_mat_that_disagrees_with_the_ilsvrc_table_is_refused(tmp_path: Path) -> None:
    rows = [(1, "n02100735", "English setter"), (2, "n02119789", "kit fox")]  # IDs swapped
    with pytest.raises(UserError, match="gives n02100735 the ID 1, the ILSVRC-2012 devkit gives"):
        devkit.read_devkit(_devkit_file(tmp_path, rows, "1\n"))


def test_without_scipy_the_shipped_table_labels_imagenet(tmp_path: Path, monkeypatch) -> None:
    rows = [(1, "n02119789", "kit fox")]
    path = _devkit_file(tmp_path, rows, "1\n")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # `from scipy.io import ...` fails
    kit = devkit.read_devkit(path)
    assert kit.unread == "scipy is not installed"
    assert kit.table.ids == devkit.shipped_table().ids and len(kit.table.ids) == 1000


def test_without_scipy_other_classes_ask_for_it(
    shapes: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    code, err = run_prepare([shapes["train"].parent, tmp_path / "out", *OPTS], capsys)
    assert code == 2 and err.count("\n") == 1 and "install scipy" in err
    assert not (tmp_path / "out" / "meta.json").exists()


# --- --verify -----------------------------------------------------------------------------------


def test_verify_compares_md5_with_the_published_sums(
    shapes: dict[str, Path], reference: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    sources = [shapes["train"], shapes["val"], shapes["devkit"]]
    out = tmp_path / "out"
    code, err = run_prepare([*sources, out, "--verify", *OPTS], capsys)
    assert code == 2 and err.count("\n") == 1 and not out.exists()  # before any work
    assert f"{shapes['train']} has MD5" in err and "1d675b47d978889d74fa0da5fadfb00e" in err
    sums = {kind: hashlib.md5(shapes[kind].read_bytes()).hexdigest() for kind in OFFICIAL}
    assert tars.md5sum(shapes["val"]) == sums["val"]
    published = {kind: (OFFICIAL[kind], sums[kind]) for kind in OFFICIAL}
    monkeypatch.setattr(tars, "PUBLISHED_MD5", {**published, "val": (OFFICIAL["val"], "0" * 32)})
    code, err = run_prepare([*sources, out, "--verify", *OPTS], capsys)
    assert code == 2 and str(shapes["val"]) in err and str(shapes["train"]) not in err
    monkeypatch.setattr(tars, "PUBLISHED_MD5", published)
    assert prep.main([*map(str, sources), str(out), "--verify", *OPTS]) == 0
    assert_same_output(out, reference)
    code, err = run_prepare([shapes["folders"], tmp_path / "o2", "--verify"], capsys)
    assert code == 2 and "leave --verify out" in err


# --- bad input: one line, exit 2, nothing looks finished, a rerun finishes ----------------------


def _cut(path: Path, dest: Path, keep: float) -> Path:
    dest.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return dest


@pytest.mark.parametrize("case", ["truncated_train", "truncated_val", "foreign", "no_devkit"])
def test_bad_archives_are_one_line_and_a_rerun_finishes(
    case: str, shapes: dict[str, Path], reference: Path, tmp_path: Path, capsys
) -> None:
    good = [shapes["train"], shapes["val"], shapes["devkit"]]
    bad = list(good)
    if case == "truncated_train":  # an unfinished download: cut in the middle
        bad[0] = _cut(shapes["train"], tmp_path / OFFICIAL["train"], 0.5)
    elif case == "truncated_val":
        bad[1] = _cut(shapes["val"], tmp_path / OFFICIAL["val"], 0.7)
    elif case == "foreign":  # a tar of something else given in place of the val tar
        bad[1] = tmp_path / "photos.tar"
        with tarfile.open(bad[1], "w") as tar:
            _add(tar, "holiday/beach.jpg", b"not really")
            _add(tar, "holiday/notes.txt", b"sun")
    else:
        bad = good[:2]
    out = tmp_path / "out"
    code, err = run_prepare([*bad, out, *OPTS], capsys)
    expected = {
        "truncated_train": f"error: {bad[0]} is truncated",
        "truncated_val": f"error: {bad[1]} is truncated",
        "foreign": f"error: {bad[1]} is not an ILSVRC-2012 archive: it holds 'holiday/",
        "no_devkit": "without labels: give the devkit ILSVRC2012_devkit_t12.tar.gz",
    }[case]
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (out / "meta.json").exists()
    assert prep.main([*map(str, good), str(out), *OPTS]) == 0
    assert_same_output(out, reference)


def test_class_tar_damaged_inside_the_train_tar_is_named(tmp_path: Path, capsys) -> None:
    path = tmp_path / OFFICIAL["train"]
    with tarfile.open(path, "w") as tar:
        _add(tar, "n01440764.tar", _tar_bytes([("a.JPEG", b"x" * 3000)])[:2048])
    code, err = run_prepare([path, tmp_path / "out"], capsys)
    assert code == 2 and f"error: n01440764.tar inside {path} is truncated" in err


def test_a_tar_cut_anywhere_is_refused(tmp_path: Path) -> None:
    data = _tar_bytes([("a.JPEG", b"a" * 700), ("b.JPEG", b""), ("c.JPEG", b"c" * 1025)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        want = [(m.name[2:], m.offset_data, m.size) for m in tar if m.isreg()]
    path = tmp_path / "x.tar"
    path.write_bytes(data)
    with tars.open_file(path) as fd:
        got = [
            (m.name, m.offset, m.size) for m in tars.list_tar(fd, 0, len(data), "x") if m.regular
        ]
        assert got == want
        end = want[-1][1] + 1536  # the last data, padded to whole blocks
        for cut in [*range(0, end + 512, 256), end - 1]:
            with pytest.raises(UserError, match="truncated|not a tar"):
                tars.list_tar(fd, 0, cut, "x")


def _full_disk_after(budget: list[int]):
    """An atomic_open whose writes fail with ENOSPC once ``budget[0]`` bytes are spent."""
    real = atomic.atomic_open

    class Limited:
        def __init__(self, f) -> None:
            self.f = f

        def write(self, data) -> int:
            budget[0] -= len(data)
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name: str):
            return getattr(self.f, name)

    @contextmanager
    def limited_open(path, mode="wb"):
        with real(path, mode) as f:
            yield Limited(f)

    return limited_open


def _units(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*.npz")}


def test_full_disk_is_one_line_keeps_finished_units_and_a_rerun_finishes(
    shapes: dict[str, Path], reference: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    sources = [shapes["train"], shapes["val"], shapes["devkit"]]
    # the full units (4 images) come first: two fit, the third's shard does not (savez writes
    # a little more than the .npz keeps: it rewrites each member's header)
    first = [reference / "train" / f"{label:05d}-000{ext}" for label in (0, 1) for ext in EXTS]
    third = (reference / "train" / "00002-000.bin").stat().st_size
    budget = sum(p.stat().st_size for p in first) + third // 2
    monkeypatch.setattr(atomic, "atomic_open", _full_disk_after([budget]))
    code, err = run_prepare([*sources, out, *OPTS], capsys)
    monkeypatch.undo()
    assert code == 2 and err.startswith(f"error: no space left on the device of {out}")
    assert "run the same command again" in err and err.count("\n") == 1
    assert not (out / "meta.json").exists() and not list(out.rglob("*.tmp"))
    kept = _units(out)
    assert sorted(kept) == ["train/00000-000.npz", "train/00001-000.npz"]
    assert prep.main([*map(str, sources), str(out), *OPTS]) == 0
    assert {k: v for k, v in _units(out).items() if k in kept} == kept  # not redone
    assert_same_output(out, reference)


# --- recognising the downloads ------------------------------------------------------------------


def test_downloads_are_recognised_by_content_not_name(
    shapes: dict[str, Path], tmp_path: Path, capsys
) -> None:
    renamed = {kind: tmp_path / f"{kind}.bin" for kind in OFFICIAL}
    for kind, path in renamed.items():
        shutil.copy(shapes[kind], path)
    assert archives.recognise(list(renamed.values())[::-1]) == renamed
    with pytest.raises(UserError, match="are both ILSVRC2012_img_val.tar"):
        archives.recognise([renamed["val"], shapes["val"]])
    (tmp_path / "notes.txt").write_text("hello\n")
    code, err = run_prepare([tmp_path / "notes.txt", tmp_path / "out"], capsys)
    assert code == 2 and "is neither a tar archive nor a .tar.gz" in err
    code, err = run_prepare([renamed["val"], renamed["devkit"], tmp_path / "out"], capsys)
    assert code == 2 and "no training archive (ILSVRC2012_img_train.tar)" in err
    with pytest.raises(SystemExit) as exit_info:  # a source without an output folder
        prep.main([str(renamed["train"])])
    assert exit_info.value.code == 2 and "SOURCE [SOURCE ...] OUT" in capsys.readouterr().err
