"""The comparison variants' options (configs/variants/) and the extra conv6 of §6.

References: direct float64 loops of cuda-convnet2's formulas, cuda-convnet2's learning-rate
values computed from its ``dexp`` definition (lr.cu), torchvision's own resized_crop, PIL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from alexnet import prepare
from alexnet.config import DataConfig, ModelConfig, load_config
from alexnet.data import transforms as T
from alexnet.data.loaders import EvalLoader
from alexnet.data.packed import PackedSplit, load_stats
from alexnet.errors import UserError
from alexnet.model import AlexNet, build_model
from alexnet.model.variants import SameMapNorm
from alexnet.runtime import Placement
from alexnet.training.optim import LRSchedule, build_optimizer, set_lr

from conftest import ROOT, image_batch, model_cfg


def test_same_map_norm_is_cuda_convnet2s_rnorm() -> None:
    """kCNorm (conv_util.cu): window from p - 2 to p + 2, clipped; scale / size^2; minDiv 1."""
    x = image_batch(1, 9, torch.float64)[:, :2] / 10
    got = SameMapNorm()(x)
    ref = torch.empty_like(x)
    side = x.shape[-1]
    for y in range(side):
        for c in range(side):
            win = x[..., max(0, y - 2) : y + 3, max(0, c - 2) : c + 3]
            ref[..., y, c] = x[..., y, c] / (1.0 + 1e-3 / 25 * (win**2).sum((-2, -1))) ** 0.75
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    assert (got - x).abs().max() > 1e-3 * x.abs().max()  # the test input is not a fixed point


def test_same_map_norm_sits_between_lrn2_and_pool2() -> None:
    model = build_model(model_cfg("lrn.same_map_norm=true")).eval()
    seen: list[str] = []
    for name in ("lrn2", "norm2", "pool2"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: seen.append(n))
    with torch.no_grad():
        model(image_batch(1))
    assert seen == ["lrn2", "norm2", "pool2"]


def test_conv6_is_a_tower_local_3x3_conv_over_pool5() -> None:
    model = build_model(model_cfg("extra_conv6=true")).eval()
    keys = [k.split(".")[0] for k in model.state_dict()]
    assert keys.index("conv6") == keys.index("conv5") + 2  # conv1..conv5, conv6, fc6..fc8
    layer = model.conv6
    shape = (layer.in_channels, layer.out_channels, layer.kernel_size, layer.groups)
    assert shape == (256, 256, (3, 3), 2)
    assert sum(p.numel() for p in layer.parameters()) == 256 * 128 * 9 + 256
    assert torch.all(layer.bias == 1.0)  # a hidden tower-local conv: §5's bias 1, like conv4/5
    assert abs(layer.weight.std().item() - 0.01) < 0.001
    x = image_batch(2)
    with torch.no_grad():
        pool5 = model.forward_to(x, "pool5")
        fc6 = model.forward_to(x, "fc6")
        by_hand = torch.relu(
            model.fc6(torch.relu(model.conv6(pool5.view(2, 256, 6, 6))).flatten(1))
        )
    assert pool5.shape == (2, 9216)
    assert torch.allclose(fc6, by_hand, rtol=1e-5, atol=1e-5 * by_hand.abs().max().item())


def test_cuda_convnet2_schedule_is_its_dexp() -> None:
    """epsW=dexp[base=0.02;tgtFactor=250;numSteps=4], epsB=dexp[base=0.04;tgtFactor=25;
    numSteps=2] over 90 epochs (layer-params-imagenet-2gpu-model.cfg, lr.cu)."""

    def dexp(base: float, target: float, steps: int, progress: float) -> float:
        rates = [base * (1 / target) ** (i / (steps - 1)) for i in range(steps - 1)]
        rates.append(base / target)
        return next((r for i, r in enumerate(rates) if progress <= (i + 1) / len(rates)), rates[-1])

    cfg = load_config(ROOT / "configs/variants/cuda_convnet2.yaml")
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg.optim)
    for epoch in range(cfg.train.epochs):
        progress = (epoch + 0.5) / cfg.train.epochs  # the middle of the epoch
        set_lr(optimizer, schedule.lr(epoch), schedule.bias_lr(epoch))
        weights, biases = (g["lr"] for g in optimizer.param_groups)
        assert weights == pytest.approx(dexp(0.02, 250, 4, progress), rel=1e-3), epoch
        assert biases == pytest.approx(dexp(0.04, 25, 2, progress), rel=1e-12), epoch


def test_random_resized_crop_boxes_and_crops() -> None:
    gen = torch.Generator().manual_seed(3)
    top, left, h, w = T.resized_crop_boxes(gen, 500, 256)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 256) & (left + w <= 256)).all())
    area = (h * w).double() / 256**2
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0  # torchvision's scale (0.08, 1)
    aspect = w.double() / h.double()  # within (3/4, 4/3) up to the rounding of w and h
    assert aspect.min() >= 0.75 * 0.95 and aspect.max() <= 4 / 3 * 1.05
    assert area.std() > 0.1  # really random boxes, not one size
    images = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    flip = torch.tensor([False, True, False, True])
    got = T.crop_flip(images, top[:4], left[:4], flip, 224, h[:4], w[:4])
    for i in range(4):
        box = (int(top[i]), int(left[i]), int(h[i]), int(w[i]))
        want = TF.resized_crop(images[i], *box, [224, 224], antialias=True)
        assert torch.equal(got[i], TF.horizontal_flip(want) if flip[i] else want)


def test_resized_crop_keeps_the_other_draws() -> None:
    """Switching RandomResizedCrop on changes only the boxes: flips and lighting stay."""
    kw = dict(image_size=256, size=224)
    plain = T.draw_params(torch.Generator().manual_seed(5), 8, **kw)
    boxes = T.draw_params(torch.Generator().manual_seed(5), 8, resized_crop=True, **kw)
    assert torch.equal(plain.flip, boxes.flip) and torch.equal(plain.alpha, boxes.alpha)
    assert boxes.height is not None and not torch.equal(plain.top, boxes.top)


def test_bgr_hands_the_network_caffes_channel_order(prepared_tiny: Path) -> None:
    split, stats = PackedSplit(prepared_tiny, "val"), load_stats(prepared_tiny)
    cfg = DataConfig(root=prepared_tiny, workers=0, channel_order="bgr")
    loader = EvalLoader(split, stats, cfg, ModelConfig(), 1, 2, Placement())
    views, _ = next(iter(loader))
    image = split.image(0).double().numpy()  # (3, 256, 256) RGB
    want = (image - stats.mean)[::-1, 16:240, 16:240]  # mean subtracted in RGB, then B, G, R
    assert np.allclose(views[0, 0].double().numpy(), want, atol=1e-3)


def test_warp_prepares_caffes_images_and_loaders_check_it(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = prepared_tiny.parent / "src", tmp_path / "warped"
    args = [str(source), str(out), "--workers", "1", "--limit-per-class", "1", "--encoding", "raw"]
    assert prepare.main([*args, "--resize", "warp"]) == 0
    assert json.loads((out / "meta.json").read_text())["resize"] == "warp"
    split = PackedSplit(out, "train")
    name = sorted((source / "train").glob("*/*"))[0]  # class 0's first file, an odd one
    with Image.open(name) as im:
        original = im.convert("RGB")
    assert original.size[0] != original.size[1]  # a warp differs from the central crop
    want = np.asarray(original.resize((256, 256), Image.Resampling.BICUBIC))
    assert np.array_equal(split.image(0).permute(1, 2, 0).numpy(), want)
    with pytest.raises(UserError, match="--resize warp"):
        EvalLoader(split, None, DataConfig(), ModelConfig(), 10, 1, Placement())


def test_variant_files_say_what_they_are() -> None:
    caffe = load_config(ROOT / "configs/variants/caffe_bvlc.yaml")
    assert (caffe.data.resize, caffe.data.channel_order) == ("warp", "bgr")
    cc2 = load_config(ROOT / "configs/variants/cuda_convnet2.yaml")
    assert cc2.model.lrn.same_map_norm and cc2.optim.lr == 0.02
    tv = load_config(ROOT / "configs/variants/torchvision_owt.yaml")
    assert tv.augment.random_resized_crop
    assert math.isclose(cc2.schedule.factor, 250 ** (-1 / 3), rel_tol=1e-4)
    with torch.device("meta"):
        assert isinstance(AlexNet(cc2.model).norm2, SameMapNorm)
