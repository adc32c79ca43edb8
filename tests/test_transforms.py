"""Crops, flips, ten-crop, mean subtraction and PCA lighting against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from alexnet import paper
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.data.packed import Stats, eig_descending
from alexnet.errors import UserError


def _images(n: int, h: int = 256, w: int = 256, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(n * h + w)
    x = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) + 0.25


def _stats(size: int = 256, seed: int = 2) -> Stats:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3, 3)) * 40
    cov = a @ a.T + np.diag([300.0, 100.0, 20.0])
    eigval, eigvec = eig_descending(cov)
    return Stats(rng.uniform(60, 190, size=(3, size, size)), cov, eigval, eigvec, pixels=1000)


def _params(n: int, seed: int = 0, **kw) -> T.AugmentParams:
    return T.draw_params(torch.Generator().manual_seed(seed), n, 256, 224, **kw)


def test_offsets_cover_all_33x33_positions_and_flip_half_the_time() -> None:
    p = _params(40_000)
    assert p.top.min() == 0 and p.left.min() == 0 and p.top.max() == 32 and p.left.max() == 32
    cells = torch.unique(p.top * 33 + p.left)
    assert len(cells) == 33 * 33  # §4.1: every one of the 33x33 offsets occurs
    # a fair coin: 40k draws have std 0.0025 around 1/2
    assert abs(p.flip.float().mean().item() - 0.5) < 0.01
    assert p.alpha.shape == (40_000, 3) and abs(p.alpha.std().item() - paper.PCA_ALPHA_STD) < 0.002


def test_switching_augmentations_off_keeps_the_other_draws() -> None:
    full, no_crop, no_flip = _params(64), _params(64, random_crop=False), _params(64, flip=False)
    assert (no_crop.top == 16).all() and (no_crop.left == 16).all()
    assert torch.equal(no_crop.flip, full.flip) and torch.equal(no_crop.alpha, full.alpha)
    assert not no_flip.flip.any() and torch.equal(no_flip.top, full.top)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_equals_direct_slicing(dtype: torch.dtype) -> None:
    x, p = _images(16, dtype=dtype), _params(16, seed=3)
    expected = []
    for i in range(16):
        top, left = int(p.top[i]), int(p.left[i])
        patch = x[i, :, top : top + 224, left : left + 224].numpy()
        expected.append(patch[:, :, ::-1] if p.flip[i] else patch)
    got = T.crop_flip(x, p.top, p.left, p.flip, 224)
    assert got.dtype == dtype and torch.equal(got, torch.from_numpy(np.stack(expected)))
    assert torch.equal(T.crop_flip(list(x), p.top, p.left, p.flip, 224), got)  # a list of decodes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize(("h", "w", "size"), [(256, 256, 224), (256, 256, 227), (250, 261, 224)])
def test_ten_crop_equals_torchvision(dtype: torch.dtype, h: int, w: int, size: int) -> None:
    x = _images(3, h, w, dtype)
    got = T.ten_crop(x, size)
    expected = torch.stack(v2.TenCrop(size)(x), dim=1)
    assert got.shape == (3, 10, 3, size, size) and torch.equal(got, expected)
    assert torch.equal(T.center_crop(x, size), v2.CenterCrop(size)(x))


def test_ten_crop_flipped_views_are_mirrors_of_the_opposite_corners() -> None:
    views = T.ten_crop(_images(1), 224)[0]
    # view 5 (mirrored image's top-left) is the mirror of view 1 (top-right), and so on
    for plain, mirrored in [(1, 5), (0, 6), (3, 7), (2, 8)]:
        assert torch.equal(views[plain].flip(-1), views[mirrored])
    assert not torch.equal(views[0].flip(-1), views[5])  # not simply each view mirrored in place


def test_mean_image_is_subtracted_before_cropping_and_flipping() -> None:
    stats, x, p = _stats(), _images(8), _params(8, seed=4)
    norm = N.build_normalizer(stats, "mean_image", 224)
    centred = x.double() - torch.from_numpy(stats.mean)  # the whole 256 image, then crop
    expected = T.crop_flip(centred, p.top, p.left, p.flip, 224)
    got = N.finish(T.crop_flip(x, p.top, p.left, p.flip, 224), p, norm)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), expected, atol=1e-4)


def test_mean_image_center_and_channel_mean_std_match_formulas() -> None:
    stats, x, p = _stats(), _images(8), _params(8, seed=5)
    crops = T.crop_flip(x, p.top, p.left, p.flip, 224)
    centre = N.finish(crops, p, N.build_normalizer(stats, "mean_image_center", 224))
    expected = crops.double() - torch.from_numpy(stats.mean[:, 16:240, 16:240])
    assert torch.allclose(centre.double(), expected, atol=1e-4)
    tv = N.finish(crops, p, N.build_normalizer(None, "channel_mean_std", 224))
    m = torch.tensor([0.485, 0.456, 0.406]).double()[:, None, None]
    s = torch.tensor([0.229, 0.224, 0.225]).double()[:, None, None]
    assert torch.allclose(tv.double(), (crops.double() / 255 - m) / s, atol=1e-5)


def test_eval_views_subtract_the_mean_at_each_view_position() -> None:
    stats, x = _stats(), _images(2)
    norm = N.build_normalizer(stats, "mean_image", 224)
    positions = T.view_positions(256, 256, 224, 10)
    got = N.finish_views(T.crop_views(x, positions, 224), positions, norm)
    expected = torch.stack(v2.TenCrop(224)(x.double() - torch.from_numpy(stats.mean)), dim=1)
    assert got.shape == (2, 10, 3, 224, 224) and torch.allclose(got.double(), expected, atol=1e-4)


def _lit_shifts(stats: Stats | None, lighting: str, constants: str, n: int) -> torch.Tensor:
    """What n zero images with a zero mean become: the lighting shift (x rescale), 0-255."""
    eig = (stats.cov, stats.eigval, stats.eigvec, 1) if stats else (None,) * 4
    zero = Stats(np.zeros((3, 2, 2)), *eig)
    kw = {"lighting": lighting, "lighting_constants": constants}
    norm = N.build_normalizer(zero, "mean_image", 1, **kw)
    p = T.draw_params(torch.Generator().manual_seed(n), n, 2, 1)
    return N.finish(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), p, norm)[:, :, 0, 0].double()


# The published tables, typed out from their sources (faithful-spec 5.2), not read from paper.py:
# fb.resnet.torch datasets/imagenet.lua: eigenvalues of [0,1] pixels, eigenvectors as columns;
FB_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
FB_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)
# cuda-convnet2 make-data/input_meta (color_pca), decoded: std devs on 0-255, columns as above.
CC2_STD = np.array([121.7801, 37.0939, 19.7208])
CC2_EIGVEC = np.array(
    [[-0.5635, -0.7126, 0.4180], [-0.5762, -0.0235, -0.8170], [-0.5920, 0.7012, 0.3973]]
)


def _eigen(stats: Stats, constants: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent reading of the constants: (eigenvalues as 0-255 variances, eigenvectors)."""
    if constants == "fb":
        return FB_EIGVAL * 255**2, FB_EIGVEC
    if constants == "cuda_convnet2":
        return CC2_STD**2, CC2_EIGVEC
    return np.linalg.eigh(stats.cov)[0][::-1], np.linalg.eigh(stats.cov)[1][:, ::-1]


@pytest.mark.parametrize("constants", ["dataset", "fb", "cuda_convnet2"])
@pytest.mark.parametrize("lighting", ["eigenvalue", "sqrt_eigenvalue"])
def test_lighting_covariance_matches_the_formula(lighting: str, constants: str) -> None:
    stats, n, std = _stats(2), 100_000, paper.PCA_ALPHA_STD
    shifts = _lit_shifts(stats, lighting, constants, n).numpy()
    lam, vec = _eigen(stats, constants)
    if lighting == "eigenvalue":  # shift_255 = 255 * V (alpha * lambda / 255^2)
        pc_std, rescale = std * 255 * lam / 255**2, 1.0
    else:  # shift_255 = V (alpha * sqrt(lambda)), whole image x 1/1.1
        pc_std, rescale = std * np.sqrt(lam), 1 / 1.1
    predicted = rescale**2 * vec @ np.diag(pc_std**2) @ vec.T
    empirical = np.cov(shifts.T)
    assert np.abs(empirical - predicted).max() < 0.02 * predicted.max()
    # along each principal component separately (the small ones too), 100k draws: ~0.5% error
    along = np.linalg.solve(vec, shifts.T)  # coordinates in the (not quite orthonormal) basis
    np.testing.assert_allclose(along.std(axis=1), rescale * pc_std, rtol=0.03)


def test_lighting_magnitudes_match_the_spec_anchors() -> None:
    # spec §5.2: PC1 shift std is ~5.5 of 255 for fb.resnet, ~12.2 for CC2 (before the 1/1.1)
    fb = _lit_shifts(None, "eigenvalue", "fb", 50_000).numpy() @ FB_EIGVEC
    cc2 = _lit_shifts(None, "sqrt_eigenvalue", "cuda_convnet2", 50_000).numpy() @ CC2_EIGVEC
    fb, cc2 = fb[:, 0], cc2[:, 0]  # along PC1
    assert abs(fb.std() - 5.55) < 0.1 and abs(cc2.std() * 1.1 - 12.18) < 0.2


@pytest.mark.parametrize("normalize", ["mean_image", "mean_image_center", "channel_mean_std"])
def test_lighting_with_zero_alpha_is_identity_and_shifts_each_image_uniformly(
    normalize: str,
) -> None:
    stats, x = _stats(), _images(4)
    p = _params(4, seed=6)
    crops = T.crop_flip(x, p.top, p.left, p.flip, 224)
    plain = N.finish(crops, p, N.build_normalizer(stats, normalize, 224))
    lit = N.build_normalizer(stats, normalize, 224, lighting="eigenvalue")
    zero = T.AugmentParams(p.top, p.left, p.flip, torch.zeros_like(p.alpha))
    assert torch.equal(N.finish(crops, zero, lit), plain)
    shifted = N.finish(crops, p, lit) - plain  # constant over each image's pixels
    assert torch.allclose(shifted, shifted[:, :, :1, :1].expand_as(shifted), atol=1e-4)
    assert shifted.abs().amax() > 0
    if normalize == "channel_mean_std":  # the 0-255 shift divided by 255 * std
        lam01 = torch.from_numpy(stats.eigval) / 255**2  # shift_255 = 255 * V (alpha * lambda01)
        s255 = 255 * (p.alpha.double() * lam01) @ torch.from_numpy(stats.eigvec).T
        expected = s255 / (255 * torch.tensor(N.TV_STD).double())
        # values below 3 on this scale, in float32: 32 rounding units of 3
        assert torch.allclose(shifted[:, :, 0, 0].double(), expected, atol=32 * 3 * 2**-23)


def test_sqrt_eigenvalue_rescales_the_whole_lit_image() -> None:
    stats, x, p = _stats(), _images(4), _params(4, seed=8)
    crops = T.crop_flip(x, p.top, p.left, p.flip, 224)
    norm = N.build_normalizer(stats, "mean_image", 224, lighting="sqrt_eigenvalue")
    sigma = torch.from_numpy(np.sqrt(stats.eigval))  # shift_255 = V (alpha * sqrt(lambda))
    shift = (p.alpha.double() * sigma) @ torch.from_numpy(stats.eigvec).T
    centred = T.crop_flip(x.double() - torch.from_numpy(stats.mean), p.top, p.left, p.flip, 224)
    expected = (centred + shift[:, :, None, None]) / 1.1
    assert torch.allclose(N.finish(crops, p, norm).double(), expected, atol=1e-3)


def test_missing_stats_and_oversized_crops_are_user_errors() -> None:
    with pytest.raises(UserError, match="stats.npz"):
        N.build_normalizer(None, "mean_image", 224)
    with pytest.raises(UserError, match="stats.npz"):
        N.build_normalizer(None, "channel_mean_std", 224, lighting="eigenvalue")
    with pytest.raises(UserError, match="larger"):
        T.draw_params(torch.Generator(), 1, 200, 224)
