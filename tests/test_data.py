"""Loaders over small packed data sets written here (not by alexnet.prepare)."""

from __future__ import annotations

import re
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from alexnet import atomic
from alexnet.bench import __main__ as bench
from alexnet.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from alexnet.data import packed
from alexnet.data import transforms as T
from alexnet.data.images import Storage, encode
from alexnet.data.loaders import EvalLoader, TrainLoader
from alexnet.data.packed import PackedSplit
from alexnet.errors import UserError
from alexnet.runtime import Placement

S = 256
CLASSES = ["n0000000a", "n0000000b", "n0000000c"]
Records = list[tuple[torch.Tensor, int]]  # (3, S, S) uint8 image, label


def write_packed(root: Path, splits: dict[str, Records], encoding: str) -> Path:
    """A prepared folder in packed.py's documented layout, with shards of at most 5 records."""
    root.mkdir(parents=True)
    meta = {
        "format": packed.FORMAT,
        "version": packed.VERSION,
        "encoding": encoding,
        "image_size": S,
        "classes": CLASSES,
        "splits": {},
    }
    for name, records in splits.items():
        (root / name).mkdir()
        rows, shards = [], []
        for k in range(0, len(records), 5):
            shards.append(f"{name}/{k // 5:03d}.bin")
            offset = 0
            with open(root / shards[-1], "wb") as f:
                for image, label in records[k : k + 5]:
                    if encoding == "raw":
                        data = image.permute(1, 2, 0).contiguous()  # HWC bytes
                    else:  # as prepare stores images: PIL, q95, 4:4:4, baseline
                        photo = Image.fromarray(image.permute(1, 2, 0).numpy())
                        data = torch.frombuffer(
                            bytearray(encode(photo, Storage())[0]), dtype=torch.uint8
                        )
                    f.write(data.numpy().tobytes())
                    crc = zlib.crc32(data.numpy().tobytes())
                    rows.append((len(shards) - 1, offset, data.numel(), label, crc))
                    offset += data.numel()
        np.save(root / name / "index.npy", np.array(rows, dtype=np.int64))
        meta["splits"][name] = {"count": len(records), "shards": shards}
    train = torch.stack([im for im, _ in splits["train"]]).double()
    pixels = train.permute(1, 0, 2, 3).reshape(3, -1).numpy()
    packed.save_stats(root, train.mean(0).numpy(), np.cov(pixels), pixels.shape[1])
    atomic.write_json(root / "meta.json", meta)
    return root


def _read_raw(root: Path, split: str, i: int) -> torch.Tensor:
    """Record i straight from index.npy and its shard file (HWC bytes -> CHW)."""
    shard, offset, length = np.load(root / split / "index.npy")[i, :3]
    path = root / packed.read_meta(root)["splits"][split]["shards"][shard]
    data = np.fromfile(path, np.uint8, length, offset=offset)
    return torch.from_numpy(data.reshape(S, S, 3).transpose(2, 0, 1).copy())


def _smooth_images(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 12, 12, generator=g) * 255
    big = torch.nn.functional.interpolate(low, size=(S, S), mode="bilinear", align_corners=False)
    return list((big + torch.rand(big.shape, generator=g) * 20).clamp(0, 255).to(torch.uint8))


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images = _smooth_images(34, seed=0)
    splits = {
        "train": [(im, i % 3) for i, im in enumerate(images[:23])],
        "val": [(im, (i * 2) % 3) for i, im in enumerate(images[23:])],
    }
    base = tmp_path_factory.mktemp("packed")
    return {enc: write_packed(base / enc, splits, enc) for enc in ("jpeg", "raw")}


def _train(
    root: Path,
    loader: str = "cpu",
    workers: int = 0,
    batch: int = 6,
    augment: AugmentConfig | None = None,
    seed: int = 7,
    steps_per_epoch: int | None = None,
    at: Placement | None = None,
) -> TrainLoader:
    cfg = DataConfig(root=root, loader=loader, workers=workers)
    train = TrainConfig(batch_size=batch, seed=seed, steps_per_epoch=steps_per_epoch)
    stats = packed.load_stats(root)
    split = PackedSplit(root, "train")
    return TrainLoader(
        split, stats, cfg, augment or AugmentConfig(), train, ModelConfig(), at or Placement()
    )


def _batches(loader: TrainLoader, epoch: int = 0, start: int = 0) -> list:
    return list(loader.epoch(epoch, start_step=start))


def _equal(a: list, b: list) -> bool:
    same = (torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True))
    return len(a) == len(b) and all(same)


def test_batches_are_stored_images_cropped_after_mean_subtraction(roots: dict[str, Path]) -> None:
    root = roots["raw"]  # raw encoding: exact pixels, so the reference is exact
    loader, stats = _train(root), packed.load_stats(root)
    batches = _batches(loader)
    assert len(batches) == len(loader) == loader.steps == 23 // 6
    seen = []
    for step, (x, y) in enumerate(batches):
        idx, p = loader.order.indices(0, step).tolist(), loader.order.params(0, step)
        stored = torch.stack([_read_raw(root, "train", i) for i in idx])
        centred = stored.double() - torch.from_numpy(stats.mean)
        lam01 = torch.from_numpy(stats.eigval) / 255**2  # paper: 255 * V (alpha * lambda01)
        shift = 255 * (p.alpha.double() * lam01) @ torch.from_numpy(stats.eigvec).T
        expected = T.crop_flip(centred, p.top, p.left, p.flip, 224) + shift[:, :, None, None]
        assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32
        assert torch.allclose(x.double(), expected, atol=1e-3)
        assert y.tolist() == [i % 3 for i in idx]  # the labels as written
        seen += idx
    assert len(set(seen)) == len(seen) == 18  # a permutation, last partial batch dropped


def test_same_seed_same_batches_other_epoch_or_seed_differs(roots: dict[str, Path]) -> None:
    a, b = _batches(_train(roots["jpeg"])), _batches(_train(roots["jpeg"]))
    assert _equal(a, b)
    assert not _equal(a, _batches(_train(roots["jpeg"]), epoch=1))
    order = _train(roots["jpeg"]).order
    assert not torch.equal(order.permutation(0), order.permutation(1))
    other = _train(roots["jpeg"], seed=8).order
    assert not torch.equal(order.permutation(0), other.permutation(0))
    p0, p1 = order.params(0, 0), order.params(1, 0)  # step 0 of two epochs
    assert not torch.equal(p0.alpha, p1.alpha) and not torch.equal(p0.top, p1.top)


def test_workers_and_paths_give_identical_batches(roots: dict[str, Path]) -> None:
    reference = _batches(_train(roots["jpeg"]))
    assert _equal(reference, _batches(_train(roots["jpeg"], workers=2)))
    assert _equal(reference, _batches(_train(roots["jpeg"], loader="gpu")))  # decoded on CPU
    raw = _batches(_train(roots["raw"]))
    assert _equal(raw, _batches(_train(roots["raw"], loader="gpu")))


@pytest.mark.parametrize("loader", ["cpu", "gpu"])
def test_start_step_resumes_exactly_and_ranks_add_up(roots: dict[str, Path], loader: str) -> None:
    whole = _batches(_train(roots["jpeg"], loader))
    assert _equal(_batches(_train(roots["jpeg"], loader), start=2), whole[2:])
    ranks = [_batches(_train(roots["jpeg"], loader, at=Placement("cpu", r, 2))) for r in (0, 1)]
    joined = [
        (torch.cat([r0[0], r1[0]]), torch.cat([r0[1], r1[1]]))
        for r0, r1 in zip(*ranks, strict=True)
    ]
    assert all(len(x) == 3 for x, _ in ranks[0]) and _equal(joined, whole)


def test_abandoned_epoch_then_resume_with_persistent_workers(roots: dict[str, Path]) -> None:
    loader = _train(roots["jpeg"], workers=2)
    whole = _batches(loader, epoch=3)
    next(loader.epoch(4))  # interrupted after one step
    assert _equal(_batches(loader, epoch=3, start=1), whole[1:])
    timing = loader.pop_timing()
    assert timing["images"] == 6 * (3 + 1 + 2) and 0 < timing["wait_s"] <= timing["elapsed_s"]
    assert loader.pop_timing()["images"] == 0


def test_more_steps_than_one_permutation_continue_into_the_next(roots: dict[str, Path]) -> None:
    loader = _train(roots["raw"], steps_per_epoch=9)
    order = loader.order.permutation(0).tolist()
    assert len(_batches(loader)) == 9 and len(order) == 54
    assert sorted(order[:23]) == sorted(order[23:46]) == list(range(23))


def test_lighting_is_redrawn_each_epoch(roots: dict[str, Path]) -> None:
    aug = AugmentConfig(random_crop=False, flip=False)  # only the lighting varies
    loader = _train(roots["raw"], augment=aug, batch=23)
    (x0, _), (x1, _) = _batches(loader, 0)[0], _batches(loader, 1)[0]
    first = dict(zip(loader.order.indices(0, 0).tolist(), x0, strict=True))
    second = dict(zip(loader.order.indices(1, 0).tolist(), x1, strict=True))
    diff = first[5] - second[5]  # the same image: another, spatially constant, shift
    assert diff.abs().amax() > 0.01
    assert torch.allclose(diff, diff[:, :1, :1].expand_as(diff), atol=1e-3)


@pytest.mark.parametrize("views", [1, 10])
@pytest.mark.parametrize("loader", ["cpu", "gpu"])
def test_eval_covers_every_image_once(roots: dict[str, Path], views: int, loader: str) -> None:
    root = roots["raw"]
    cfg, stats = DataConfig(root=root, loader=loader, workers=0), packed.load_stats(root)
    split = PackedSplit(root, "val")  # 11 images: no world size below divides it
    stored = torch.stack([_read_raw(root, "val", i) for i in range(11)]).double()
    centred = stored - torch.from_numpy(stats.mean)
    if views == 10:
        expected = torch.stack(v2.TenCrop(224)(centred), 1)
    else:
        expected = v2.CenterCrop(224)(centred)[:, None]
    for world in (1, 2, 3):
        parts = [
            list(EvalLoader(split, stats, cfg, ModelConfig(), views, 4, Placement("cpu", r, world)))
            for r in range(world)
        ]
        x = torch.cat([b for part in parts for b, _ in part])
        y = torch.cat([lab for part in parts for _, lab in part])
        assert x.shape == (11, views, 3, 224, 224)
        assert torch.allclose(x.double(), expected, atol=1e-3)
        assert y.tolist() == [(i * 2) % 3 for i in range(11)]


def test_eval_cpu_workers_and_batched_decode_agree_on_jpeg(roots: dict[str, Path]) -> None:
    root, stats = roots["jpeg"], packed.load_stats(roots["jpeg"])
    split = PackedSplit(root, "val")
    cfgs = [DataConfig(root=root, loader="cpu", workers=2), DataConfig(root=root, loader="gpu")]
    loaders = [EvalLoader(split, stats, cfg, ModelConfig(), 10, 5, Placement()) for cfg in cfgs]
    assert _equal(*[list(loader) for loader in loaders])


def test_user_errors(roots: dict[str, Path], tmp_path: Path) -> None:
    root = roots["raw"]
    with pytest.raises(UserError, match="divide"):
        _train(root, batch=6, at=Placement("cpu", 0, 4))
    with pytest.raises(UserError, match="fewer than one batch"):
        _train(root, batch=64)
    train = PackedSplit(root, "train")
    small = (TrainConfig(batch_size=4), ModelConfig(), Placement())
    with pytest.raises(UserError, match="stats.npz"):
        TrainLoader(train, None, DataConfig(), AugmentConfig(), *small)
    with pytest.raises(UserError, match="stats.npz"):
        packed.load_stats(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        PackedSplit(tmp_path / "nowhere", "train")
    # torchvision normalisation with fb lighting constants needs no stats at all
    tv = replace(DataConfig(), normalize="channel_mean_std")
    fb = AugmentConfig(lighting_constants="fb")
    assert len(TrainLoader(train, None, tv, fb, *small)) == 5


def test_real_photos_through_both_paths(shared_data: Path, tmp_path: Path) -> None:
    folders = sorted((shared_data / "imagenet_sample_images").iterdir())
    files = [next(d.glob("*.JPEG")) for d in folders if d.is_dir()][:12]
    resize = v2.Compose([v2.PILToTensor(), v2.Resize(S), v2.CenterCrop(S)])  # §2 storage
    records = [(resize(Image.open(f).convert("RGB")), i % 3) for i, f in enumerate(files)]
    root = write_packed(tmp_path / "photos", {"train": records}, "jpeg")
    cpu, gpu = _batches(_train(root, batch=4)), _batches(_train(root, "gpu", batch=4))
    assert len(cpu) == 3 and _equal(cpu, gpu)
    assert abs(torch.cat([x for x, _ in cpu]).mean().item()) < 5  # mean-subtracted photos


def test_bench_data_prints_every_pipeline(roots: dict[str, Path], tmp_path: Path, capsys) -> None:
    for i, image in enumerate(_smooth_images(6, seed=5)):  # a JPEG tree for ImageFolder
        folder = tmp_path / "raw" / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        photo = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((300, 280))
        photo.save(folder / f"{i}.jpg")
    args = ["data", "--data", str(roots["jpeg"]), "--workers", "0", "--batch-size", "4"]
    args += ["--steps", "2", "--format-images", "6"]
    assert bench.main([*args, "--raw", str(tmp_path / "raw")]) == 0
    out = capsys.readouterr().out
    assert "CPUs" in out and "torch" in out
    loaders = ("packed, cpu loader", "packed, cpu loader, checksums off")
    for name in (*loaders, "ImageFolder + PIL (original JPEGs)"):
        line = next(ln for ln in out.splitlines() if ln[:38].rstrip() == name)  # a table row
        assert float(line.split()[-1]) > 0
    for name in ("jpeg ", "raw "):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert float(line.split()[-1]) > 0
    found = re.search(r"checksums: CRC-32 ([\d.]+) us per record .+, decoding it ([\d.]+) us", out)
    assert found and 0 < float(found[1]) < float(found[2])  # a checksum costs less than a decode
    assert bench.main([*args, "--raw", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.cuda
def test_gpu_path_on_cuda_against_the_cpu_decoder(roots: dict[str, Path]) -> None:
    """What the project promises about decoders (loaders.py): evaluation decodes with the CPU
    decoder whatever data.loader says, so its batches equal the CPU's up to float rounding;
    training's nvJPEG pixels differ from libjpeg-turbo's only as the JPEG standard allows
    (IDCT and colour conversion rounding, here on prepare's 4:4:4 baseline JPEGs: a level or
    two, no chroma upsampling); raw records have no decoder and match to float rounding."""

    def train(root: Path, loader: str, device: str) -> list:
        cfg, stats = DataConfig(root=root, loader=loader, workers=2), packed.load_stats(root)
        split = PackedSplit(root, "train")
        at = Placement(device)
        tl = TrainLoader(
            split, stats, cfg, AugmentConfig(), TrainConfig(batch_size=6, seed=3), ModelConfig(), at
        )
        return [(x.cpu(), y.cpu()) for x, y in tl.epoch(0)]

    def evaluate(root: Path, loader: str, device: str) -> list:
        cfg, stats = DataConfig(root=root, loader=loader, workers=2), packed.load_stats(root)
        el = EvalLoader(
            PackedSplit(root, "val"), stats, cfg, ModelConfig(), 10, 4, Placement(device)
        )
        return [(x.cpu(), y.cpu()) for x, y in el]

    for enc in ("raw", "jpeg"):
        cpu = train(roots[enc], "cpu", "cpu")
        nvjpeg, finished_on_gpu = train(roots[enc], "gpu", "cuda"), train(roots[enc], "cpu", "cuda")
        for (a, ya), (b, yb), (c, yc) in zip(cpu, nvjpeg, finished_on_gpu, strict=True):
            assert torch.equal(ya, yb) and torch.equal(ya, yc)
            assert torch.allclose(a, c, atol=1e-3)  # same decoder, finished on the GPU
            diff = (a - b).abs()
            if enc == "raw":
                assert diff.max() < 1e-3
            else:
                assert diff.mean() < 1.0 and diff.flatten().quantile(0.999) <= 3.0
        reference = evaluate(roots[enc], "cpu", "cpu")
        for (a, ya), (b, yb) in zip(reference, evaluate(roots[enc], "gpu", "cuda"), strict=True):
            assert torch.equal(ya, yb) and torch.allclose(a, b, atol=1e-3)
