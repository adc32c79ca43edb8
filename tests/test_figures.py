"""Figures of a run (``alexnet.figures``), the class names they print, and TensorBoard's pictures.

Each figure's data is checked against an independent reference: brute-force ``torch.cdist``
for the streamed neighbours, a float64 formula and hand-built kernels for the colour number,
``torch.topk`` of the evaluator's probabilities for the predictions, ``metrics.jsonl`` and
``eval.json`` read directly for the curves and the table, the evaluator's accuracy and numpy's
counts for the confusion matrix, and tensorboard's own readers for the events and projector.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.config import dump_yaml, load_config
from alexnet.data.labels import read_class_words
from alexnet.data.packed import PackedSplit
from alexnet.data.sources import find_sources
from alexnet.figures import confusion, curves, kernels, neighbours, predictions, table
from alexnet.figures.__main__ import main as figures_main
from alexnet.inference.trained import load_trained
from alexnet.training.engine import evaluate, predict

from conftest import F32_EPS, assert_close_to_f64, metric_rows

SHAPES = ["circle", "square", "triangle", "cross"]  # the tiny set's classes (synthetic.SHAPES)


@pytest.fixture(scope="module")
def trained(tiny_run: Path):
    return load_trained(tiny_run / "last.pt", workers=0)


def words_file(prepared: Path) -> list[str]:
    """The class words the synthetic set wrote beside its images, read without our parser."""
    lines = (prepared.parent / "src" / "synset_words.txt").read_text().splitlines()
    return [line.split(" ", 1)[1] for line in lines]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# --- class names --------------------------------------------------------------------------------


def test_prepare_stores_the_class_words_and_training_copies_them(prepared_tiny, tiny_run) -> None:
    assert words_file(prepared_tiny) == SHAPES
    meta = json.loads((prepared_tiny / "meta.json").read_text())
    assert meta["class_names"] == SHAPES
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    assert state["class_names"] == SHAPES and state["classes"] == meta["classes"]


def test_folder_names_are_the_names_without_a_words_file(tmp_path: Path) -> None:
    from alexnet import prepare

    for split, cls, k in [
        (s, c, k) for s in ("train", "val") for c in ("cat", "dog") for k in (0, 1)
    ]:
        (tmp_path / "src" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (k * 90, 60, 200)).save(
            tmp_path / "src" / split / cls / f"{k}.jpg"
        )
    assert prepare.main([str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "1"]) == 0
    assert PackedSplit(tmp_path / "out", "val").class_names == ["cat", "dog"]


def test_sets_prepared_before_names_were_stored_fall_back_to_the_ids(prepared_tiny, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(prepared_tiny, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["class_names"]
    (old / "meta.json").write_text(json.dumps(meta))
    split = PackedSplit(old, "train")
    assert split.class_names == split.classes == [f"n9000000{i}" for i in range(1, 5)]


def test_words_files_of_both_forms_are_read(tmp_path: Path) -> None:
    synset = tmp_path / "synset_words.txt"
    synset.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    clsloc = tmp_path / "map_clsloc.txt"
    clsloc.write_text("n02119789 1 kit_fox\nn02100735 2 English_setter\n")
    assert read_class_words(synset) == {
        "n01440764": "tench, Tinca tinca",
        "n01443537": "goldfish, Carassius auratus",
    }
    assert read_class_words(clsloc) == {"n02119789": "kit fox", "n02100735": "English setter"}


def test_imagenet_words_come_from_synset_words(shared_data: Path, tmp_path: Path) -> None:
    for wnid in ("n01440764", "n01443537", "n99999999"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / "x.JPEG").write_bytes(b"")
    words = shared_data / "imagenet_meta" / "synset_words.txt"
    plan = find_sources(tmp_path, class_words=words)
    assert plan.class_names == ["tench, Tinca tinca", "goldfish, Carassius auratus", "n99999999"]


# --- kernels (Fig. 3) ---------------------------------------------------------------------------


def test_colour_fraction_is_zero_for_grey_one_for_opponent_and_two_thirds_for_noise() -> None:
    g = torch.Generator().manual_seed(1)
    pattern = torch.randn(48, 1, 11, 11, generator=g, dtype=torch.float64)
    grey = pattern.expand(-1, 3, -1, -1)  # R = G = B at every pixel
    opponent = torch.cat([pattern, -pattern, torch.zeros_like(pattern)], 1)  # sums to 0 per pixel
    red = torch.cat([pattern, torch.zeros_like(pattern), torch.zeros_like(pattern)], 1)
    assert kernels.colour_fraction(grey).max() < 1e-20
    assert torch.allclose(kernels.colour_fraction(opponent), torch.ones(48, dtype=torch.float64))
    # one channel only: (1 - 1/3)^2 + 2 (1/3)^2 = 2/3 of the energy is off the grey axis
    assert torch.allclose(
        kernels.colour_fraction(red), torch.full((48,), 2 / 3, dtype=torch.float64)
    )
    noise = torch.randn(960, 3, 11, 11, generator=g)
    assert abs(kernels.colour_fraction(noise).mean().item() - 2 / 3) < 0.02


def test_kernels_figure_splits_the_towers_and_prints_their_numbers(
    trained, tiny_run, tmp_path, capsys
):
    w = trained.model.conv1.weight.detach().double()  # (96, 3, 11, 11)
    flat = w.flatten(2).numpy()
    expected = ((flat - flat.mean(1, keepdims=True)) ** 2).sum((1, 2)) / (flat**2).sum((1, 2))
    out = tmp_path / "kernels.png"
    argv = ["kernels", str(tiny_run), "--checkpoint", trained.name]
    assert figures_main([*argv, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"tower A (paper: GPU 1): colour fraction mean {expected[:48].mean():.3f}" in err
    assert f"tower B (paper: GPU 2): colour fraction mean {expected[48:].mean():.3f}" in err
    width, height = png_size(out)
    assert width > 1000 and height > 400


# --- predictions (Fig. 4 left) ------------------------------------------------------------------


def test_predictions_show_the_top5_of_the_evaluators_probabilities(trained, tmp_path) -> None:
    split = trained.split()
    probs, labels = predict(trained.model, trained.loader(split, views=10), trained.rt, False)
    shown = predictions.choose(trained, "val", 6, views=10, show_progress=False)
    assert [s.index for s in shown] == [0, 3, 6, 9, 12, 15]  # spread evenly over 16 images
    tol = 64 * F32_EPS  # probabilities are at most 1
    for s in shown:
        ref, order = probs[s.index].topk(4)  # 4 classes: top-5 holds them all
        assert s.label == labels[s.index]
        assert np.allclose(s.probs, ref.numpy(), rtol=0, atol=tol)
        gaps = (ref[:-1] - ref[1:]).numpy()
        for k, gap in enumerate(gaps):  # the order is decided wherever the gap exceeds rounding
            if gap > 2 * tol:
                assert s.classes[: k + 1] == order[: k + 1].tolist()
    fig = predictions.draw(torch.zeros(6, 3, 224, 224, dtype=torch.uint8), shown, SHAPES, "t")
    for s in shown:
        (ax,) = [a for a in fig.axes if a.get_label() == f"top classes of image {s.index}"]
        assert [p.get_width() for p in ax.patches] == pytest.approx(s.probs)
        assert [t.get_text() for t in ax.get_yticklabels()] == [SHAPES[c] for c in s.classes]
        colours = [p.get_facecolor() for p in ax.patches]
        reds = [c for c, rgba in zip(s.classes, colours, strict=True) if rgba[0] > rgba[2]]
        assert reds == ([s.label] if s.label in s.classes else [])  # the correct class is red


def test_errors_only_shows_images_whose_top1_is_wrong(trained) -> None:
    split = trained.split()
    probs, labels = predict(trained.model, trained.loader(split, views=1), trained.rt, False)
    wrong = set((probs.argmax(1) != labels).nonzero().flatten().tolist())
    shown = predictions.choose(trained, "val", 3, errors_only=True, show_progress=False)
    assert shown and {s.index for s in shown} <= wrong


# --- neighbours (Fig. 4 right) ------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 6, 500])
def test_streamed_neighbours_equal_a_brute_force_search(k: int) -> None:
    g = torch.Generator().manual_seed(2)
    queries = torch.randn(7, 32, generator=g, dtype=torch.float64)
    rows = torch.randn(103, 32, generator=g, dtype=torch.float64)
    blocks = torch.split(rows, [10, 1, 37, 55])  # uneven blocks, one of a single row
    d, i = neighbours.stream_nearest(queries, iter(blocks), k)
    ref_d, ref_i = torch.cdist(queries, rows).topk(min(k, 103), dim=1, largest=False)
    assert torch.equal(i, ref_i)
    assert torch.allclose(d, ref_d, rtol=1e-12, atol=0)


def test_neighbours_of_a_trained_run_are_the_nearest_in_fc7(trained) -> None:
    cfg, rt = trained.cfg, trained.rt
    queries = [1, 6, 11]
    d, i = neighbours.nearest_training_images(trained, queries, k=5, show_progress=False)
    with torch.no_grad():  # every image's fc7 at once, then the brute-force search in float64

        def fc7(split_name: str) -> torch.Tensor:
            split = trained.split(split_name)
            views, _ = next(iter(trained.loader(split, views=1, batch_size=len(split))))
            return trained.model.forward_to(views[:, 0], "fc7").double()

        train, val = fc7(cfg.data.train_split), fc7(cfg.data.val_split)[queries]
    ref = torch.cdist(val, train)  # (3, 48)
    bound = (train.shape[1] + 2) * F32_EPS  # relative error of a float32 distance over D terms
    assert torch.allclose(ref.gather(1, i), d.double(), rtol=bound, atol=0)  # the found distances
    top, top_i = ref.topk(5, dim=1, largest=False)
    assert torch.allclose(top, d.double(), rtol=bound, atol=0)  # ... are the 5 smallest
    decided = torch.cat(
        [(top[:, 1:] - top[:, :-1]) > 2 * bound * top[:, 1:], torch.ones(3, 1, dtype=torch.bool)], 1
    )
    assert torch.equal(i[decided], top_i[decided])
    assert rt.device.type == "cpu"


def test_neighbours_command_writes_a_png(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "n.png"
    argv = ["neighbours", str(tiny_run), "-n", "2", "-k", "3", "--workers", "0"]
    assert figures_main([*argv, "--no-progress", "--out", str(out)]) == 0
    width, height = png_size(out)
    assert width > 600 and height > 300


# --- curves -------------------------------------------------------------------------------------


def test_curves_plot_the_epoch_rows_of_metrics_jsonl(tiny_run: Path, tmp_path: Path) -> None:
    rows = [
        {
            "kind": "epoch",
            "epoch": e,
            "lr": lr,
            "train_loss": 2.0 - e / 10,
            "val_loss": 2.5 - e / 10,
            "train_top1_err": 0.9 - e / 10,
            "val_top1_err": 0.8,
            "train_top5_err": 0.5,
            "val_top5_err": 0.4 - e / 100,
        }
        for e, lr in [(0, 0.01), (1, 0.01), (1, 0.01), (2, 0.001)]
    ]
    rows[1]["val_top1_err"] = 0.99  # epoch 1 recorded twice (a resumed run): the last row counts
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fig = curves.draw([tiny_run, other])
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    epochs = metric_rows(tiny_run, "epoch")
    for key in ("train_loss", "val_loss", "train_top1_err", "val_top5_err"):
        line = lines[f"{tiny_run}|{key}"]
        scale = 1 if key.endswith("loss") else 100
        assert list(line.get_xdata()) == [r["epoch"] + 1 for r in epochs]
        assert list(line.get_ydata()) == pytest.approx([scale * r[key] for r in epochs])
    assert list(lines[f"{other}|val_top1_err"].get_ydata()) == pytest.approx([80, 80, 80])
    assert curves.lr_cuts(curves.curve_data(other)) == [(2, 0.01, 0.001)]  # before the 3rd epoch


# --- table --------------------------------------------------------------------------------------


def make_run(folder: Path, overrides: list[str], results: dict[str, dict[str, float]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_yaml(load_config(None, overrides)))
    (folder / "eval.json").write_text(json.dumps({"results": results}))
    return folder


def test_table_shows_each_runs_eval_json_and_the_papers_difference(tmp_path: Path) -> None:
    base = make_run(
        tmp_path / "baseline",
        [f"run.dir={tmp_path}/b"],
        {
            "1": {"top1_err": 0.412, "top5_err": 0.19},
            "10": {"top1_err": 0.4, "top5_err": 0.18},
        },
    )
    no_lrn = make_run(
        tmp_path / "no_lrn",
        ["model.lrn.enabled=false"],
        {
            "1": {"top1_err": 0.43, "top5_err": 0.2},
            "10": {"top1_err": 0.415, "top5_err": 0.1925},
        },
    )
    tanh = make_run(
        tmp_path / "tanh",
        ["model.activation=tanh"],
        {
            "1": {"top1_err": 0.5, "top5_err": 0.25},
        },
    )
    lines = table.markdown(table.table_rows([base, no_lrn, tanh], base)).splitlines()
    assert lines[2] == "| baseline | — | 41.20 / 40.00 | 19.00 / 18.00 | baseline | — |"
    assert lines[3] == (
        "| no_lrn | `model.lrn.enabled=false` | 43.00 / 41.50 | 20.00 / 19.25 | "
        "+1.50 / +1.25 (10 crops) | +1.4 / +1.2 (LRN, §3.3) |"
    )
    assert lines[4] == (
        '| tanh | `model.activation="tanh"` | 50.00 / — | 25.00 / — | +8.80 / +6.00 (1 crop) | — |'
    )


def test_table_without_eval_json_says_how_to_make_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(dump_yaml(load_config(None)))
    assert figures_main(["table", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m alexnet.eval" in err


# --- confusion ----------------------------------------------------------------------------------


def test_confusion_matrix_of_hand_made_probabilities() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    expected = [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert confusion.confusion_matrix(probs, labels).tolist() == expected
    assert confusion.confused_pairs(confusion.confusion_matrix(probs, labels)) == [
        (1, 0, 1),
        (1, 2, 1),
    ]


def test_confusion_rows_count_each_class_and_the_trace_is_the_accuracy(trained) -> None:
    split = trained.split()
    loader = trained.loader(split, views=1)
    probs, labels = predict(trained.model, loader, trained.rt, False)
    matrix = confusion.confusion_matrix(probs, labels)
    index = np.load(split.root / split.split / "index.npy")
    assert matrix.sum(1).tolist() == np.bincount(index[:, 3], minlength=4).tolist()
    accuracy = evaluate(trained.model, loader, trained.rt, expected=16, show_progress=False)
    assert int(matrix.trace()) / int(matrix.sum()) == accuracy["top1_acc"]


def test_all_writes_every_figure(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # tiny_run is read-only: draw into a copy
    assert (
        figures_main(["all", str(run), "--crops", "1", "--batch-size", "8", "--no-progress"]) == 0
    )
    for name in ("kernels", "predictions", "neighbours", "curves", "confusion"):
        width, height = png_size(run / "figures" / f"{name}.png")
        assert width > 500 and height > 300, name
    assert str(run / "figures") in capsys.readouterr().err


# --- TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_holds_a_predictions_image_per_epoch(tiny_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("predictions")
    assert [e.step for e in images] == [r["step"] for r in metric_rows(tiny_run, "epoch")]
    assert all(e.width > 400 and e.height > 300 for e in images)


def test_tensorboard_embedding_is_fc7_of_the_final_weights(tiny_run: Path, trained) -> None:
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
    from tensorboard.plugins.projector.projector_plugin import _read_tensor_tsv_file

    logdir = tiny_run / "tensorboard"
    config = text_format.Parse((logdir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    tensor = _read_tensor_tsv_file(str(logdir / embedding.tensor_path))  # (16, 4096)
    meta = [
        line.split("\t") for line in (logdir / embedding.metadata_path).read_text().splitlines()
    ]
    assert meta[0] == ["class", "validation image"]
    shown = [int(row[1]) for row in meta[1:]]
    split = trained.split()
    assert [row[0] for row in meta[1:]] == [SHAPES[int(split.labels[i])] for i in shown]
    views, _ = next(iter(trained.loader(split, views=1, batch_size=len(split))))
    with torch.no_grad():
        expected = trained.model.forward_to(views[:, 0], "fc7")[shown]
    assert_close_to_f64(torch.from_numpy(tensor), expected.double())
    assert (logdir / embedding.sprite.image_path).is_file()
    assert list(embedding.sprite.single_image_dim) == [64, 64]
