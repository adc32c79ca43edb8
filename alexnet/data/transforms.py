"""Crops, flips, mean subtraction and PCA lighting (§2, §4.1) as pure, seeded tensor functions.

Training augmentation is split so one random draw can be used in two places:

1. ``draw_params(generator, n, ...)`` draws a batch's crop offsets, flips and lighting alphas
   (``AugmentParams``, CPU tensors). Nothing else in this module consumes randomness.
2. ``crop_flip`` cuts the uint8 patches (in a loader worker, or on the device), and
   ``finish(crops, params, norm)`` makes the float network input on the crops' device: the
   mean image cropped at the *same* offset and flip (§2), then the lighting shift (§4.1).

Evaluation uses fixed views: ``view_positions`` (centre, or torchvision's ``TenCrop`` order),
``crop_views`` and ``finish_views``. Pixels are raw 0-255 RGB. A ``Normalizer`` holds what is
precomputed once: the mean image and the lighting basis, float32 on the target device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from alexnet import paper
from alexnet.data.packed import Stats
from alexnet.errors import UserError

Position = tuple[int, int, bool]  # top, left, horizontally flipped
Normalize = Literal["mean_image", "mean_image_center", "channel_mean_std"]
Lighting = Literal["eigenvalue", "sqrt_eigenvalue", "off"]
LightingConstants = Literal["dataset", "fb", "cuda_convnet2"]
# torchvision's ImageNet normalisation on the [0,1] scale; not a paper constant (spec §5.1, TV)
TV_MEAN = (0.485, 0.456, 0.406)
TV_STD = (0.229, 0.224, 0.225)
# torchvision's RandomResizedCrop defaults: area fraction and aspect ratio (w / h) of the box
TV_RRC_SCALE = (0.08, 1.0)
TV_RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class AugmentParams:
    """One batch's random augmentation: CPU tensors with ``n`` rows."""

    top: torch.Tensor  # (n,) int64 crop offset from the top
    left: torch.Tensor  # (n,) int64 crop offset from the left
    flip: torch.Tensor  # (n,) bool, horizontal reflection
    alpha: torch.Tensor  # (n, 3) float32 lighting coefficients, alpha_i ~ N(0, std)
    height: torch.Tensor | None = None  # (n,) int64 box size, resized to the crop size
    width: torch.Tensor | None = None  # (RandomResizedCrop); None = boxes of the crop size

    def __len__(self) -> int:
        return len(self.top)

    def slice(self, start: int, stop: int) -> AugmentParams:
        """Rows ``start:stop`` (a DDP rank's part of the global batch)."""
        return AugmentParams(*(t[start:stop] for t in self.astuple()))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        boxes = () if self.height is None else (self.height, self.width)
        return self.top, self.left, self.flip, self.alpha, *boxes


def draw_params(
    generator: torch.Generator,
    n: int,
    image_size: int,
    size: int,
    *,
    random_crop: bool = True,
    flip: bool = True,
    alpha_std: float = paper.PCA_ALPHA_STD,
    resized_crop: bool = False,
) -> AugmentParams:
    """Offsets uniform on 0..image_size-size, both ends included (33x33 positions for
    256 -> 224), flips with p = 1/2 and three lighting alphas per image (§4.1).

    ``resized_crop`` replaces the offsets by torchvision's RandomResizedCrop boxes
    (``resized_crop_boxes``), drawn after everything else. The draws are made in a fixed order
    whatever is switched off, so disabling one augmentation leaves the others' values
    unchanged. ``generator`` is a CPU generator.
    """
    if size > image_size:
        raise UserError(f"crop size {size} is larger than the stored images ({image_size})")
    span = image_size - size + 1
    top = torch.randint(0, span, (n,), generator=generator)
    left = torch.randint(0, span, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < paper.FLIP_PROBABILITY
    alpha = torch.randn(n, 3, generator=generator) * alpha_std
    if not random_crop:
        centre_top, centre_left, _ = view_positions(image_size, image_size, size, 1)[0]
        top, left = torch.full_like(top, centre_top), torch.full_like(left, centre_left)
    if not flip:
        flips = torch.zeros_like(flips)
    if resized_crop:
        top, left, height, width = resized_crop_boxes(generator, n, image_size)
        return AugmentParams(top, left, flips, alpha, height, width)
    return AugmentParams(top, left, flips, alpha)


def resized_crop_boxes(
    generator: torch.Generator,
    n: int,
    image_size: int,
    scale: tuple[float, float] = TV_RRC_SCALE,
    ratio: tuple[float, float] = TV_RRC_RATIO,
) -> tuple[torch.Tensor, ...]:
    """``torchvision.transforms.v2.RandomResizedCrop.get_params`` for ``n`` square images, with
    a generator: up to ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the
    first box that fits is placed uniformly; none fits: the whole image (a square image's own
    ratio, 1, lies inside ``ratio``). Returns (top, left, height, width), each (n,) int64.
    """
    side, tries = image_size, 10
    area = side * side * torch.empty(n, tries).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(*np.log(ratio).tolist(), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = fits.float().argmax(1)  # the first try that fits (0 if none)
    ok = fits.any(1)
    rows = torch.arange(n)
    h = torch.where(ok, h[rows, first], side)
    w = torch.where(ok, w[rows, first], side)
    u = torch.rand(n, 2, generator=generator)
    top = (u[:, 0] * (side - h + 1)).long()
    left = (u[:, 1] * (side - w + 1)).long()
    return top, left, h, w


def crop_flip(
    images: torch.Tensor | Sequence[torch.Tensor],
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    size: int,
    height: torch.Tensor | None = None,
    width: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image ``size`` x ``size`` crops at (top, left), mirrored where ``flip``.

    Args:
        images: (N, C, H, W), or a sequence of N (C, H, W) tensors (e.g. fresh decodes).
        top, left, flip: (N,) CPU tensors.
        height, width: (N,) box sizes for RandomResizedCrop: each box is resized to ``size``
            (bilinear, antialiased, as torchvision) before the flip; None = ``size``.

    Returns:
        (N, C, size, size), with the dtype and device of the images.
    """
    # A view per image and one stack: on CPU ~15x faster than one advanced-indexing gather
    # over the batch (measured, 128 x 3 x 256^2 uint8); on a GPU one copy plus the flips.
    views = []
    heights = [size] * len(top) if height is None else height.tolist()
    widths = [size] * len(top) if width is None else width.tolist()
    rows = zip(top.tolist(), left.tolist(), flip.tolist(), heights, widths, strict=True)
    for i, (y, x, mirrored, h, w) in enumerate(rows):
        patch = images[i][..., y : y + h, x : x + w]
        if (h, w) != (size, size):
            from torchvision.transforms.v2.functional import resize

            patch = resize(patch, [size, size], antialias=True)
        views.append(patch.flip(-1) if mirrored else patch)
    return torch.stack(views)


def view_positions(height: int, width: int, size: int, views: int) -> list[Position]:
    """Positions of the evaluation views, in ``torchvision.transforms.v2.TenCrop`` order.

    ``views=1`` is the centre crop. ``views=10`` is §4.1's four corners and centre, then the
    five crops of the *mirrored* image: its top-left patch is the mirror of the original's
    top-right one, and so on, so a mirrored view sits at left' = W - size - left.
    """
    if size > height or size > width:
        raise UserError(f"crop size {size} is larger than the image ({height}x{width})")
    centre = (int(round((height - size) / 2.0)), int(round((width - size) / 2.0)))  # as tv
    if views == 1:
        return [(*centre, False)]
    if views != 10:
        raise ValueError(f"views must be 1 or 10, got {views}")
    bottom, right = height - size, width - size
    five = [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]
    return [(y, x, False) for y, x in five] + [(y, right - x, True) for y, x in five]


def crop_views(images: torch.Tensor, positions: Sequence[Position], size: int) -> torch.Tensor:
    """The same views of every image: (N, C, H, W) -> (N, V, C, size, size)."""
    out = []
    for y, x, mirrored in positions:
        patch = images[..., y : y + size, x : x + size]
        out.append(patch.flip(-1) if mirrored else patch)
    return torch.stack(out, dim=1)


def ten_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """§4.1's ten test patches as ``torchvision.transforms.v2.TenCrop``: (N, 10, C, s, s)."""
    h, w = images.shape[-2:]
    return crop_views(images, view_positions(h, w, size, 10), size)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` patch of each image: (N, C, size, size)."""
    h, w = images.shape[-2:]
    return crop_views(images, view_positions(h, w, size, 1), size)[:, 0]


# --- normalisation and lighting ----------------------------------------------------------------


@dataclass(frozen=True)
class Normalizer:
    """What ``finish`` needs, precomputed once on the target device (float32)."""

    mode: Normalize
    size: int
    mean: torch.Tensor | None  # (3, S, S) mean image, 0-255 (the mean_image modes)
    channel_mean: torch.Tensor | None  # (3,) on the [0,1] scale (channel_mean_std)
    channel_std: torch.Tensor | None  # (3,)
    basis: torch.Tensor | None  # (3, 3): lighting shift_255 = basis @ alpha; None = off
    rescale: float  # a lit training image is multiplied by this (CC2: 1/1.1)
    bgr: bool = False  # hand the network BGR channels (Caffe); the maths above stays RGB


def lighting_eigen(stats: Stats | None, constants: LightingConstants) -> tuple[np.ndarray, ...]:
    """RGB eigenvalues (variances on the 0-255 scale) and eigenvectors (columns)."""
    if constants == "fb":  # fb.resnet: eigenvalues of [0,1]-scale pixels
        return np.asarray(paper.FB_PCA_EIGVAL) * 255.0**2, np.asarray(paper.FB_PCA_EIGVEC)
    if constants == "cuda_convnet2":  # CC2 input_meta: standard deviations on 0-255
        return np.asarray(paper.CC2_PCA_STD) ** 2, np.asarray(paper.CC2_PCA_EIGVEC)
    if stats is None:
        raise UserError("lighting_constants=dataset needs the data set's stats.npz; re-run prepare")
    return np.asarray(stats.eigval, np.float64), np.asarray(stats.eigvec, np.float64)


def lighting_basis(eigval_255: np.ndarray, eigvec: np.ndarray, lighting: Lighting) -> np.ndarray:
    """The (3, 3) matrix B with shift_255 = B @ alpha.

    eigenvalue (paper, as fb.resnet reads it): 255 * V @ (alpha * eigval_255 / 255^2).
    sqrt_eigenvalue (cuda-convnet2): V @ (alpha * sqrt(eigval_255)).
    """
    eigval_255 = np.clip(np.asarray(eigval_255, np.float64), 0.0, None)
    scale = eigval_255 / 255.0 if lighting == "eigenvalue" else np.sqrt(eigval_255)
    return np.asarray(eigvec, np.float64) * scale[None, :]


def build_normalizer(
    stats: Stats | None,
    normalize: Normalize,
    size: int,
    device: torch.device | str = "cpu",
    *,
    lighting: Lighting = "off",
    lighting_constants: LightingConstants = "dataset",
    channel_order: Literal["rgb", "bgr"] = "rgb",
) -> Normalizer:
    """Put the mean image or channel statistics and the lighting basis on ``device``."""
    mean = channel_mean = channel_std = basis = None
    if normalize == "channel_mean_std":
        channel_mean = torch.tensor(TV_MEAN, device=device)
        channel_std = torch.tensor(TV_STD, device=device)
    elif stats is None:
        raise UserError(f"data.normalize={normalize} needs stats.npz: re-run alexnet.prepare")
    else:
        mean = torch.as_tensor(np.asarray(stats.mean), dtype=torch.float32, device=device)
        if mean.ndim != 3 or mean.shape[0] != 3 or min(mean.shape[1:]) < size:
            raise UserError(
                f"the mean image in stats.npz has shape {tuple(mean.shape)}, "
                f"expected (3, S, S) with S >= {size}; re-run prepare"
            )
    if lighting != "off":
        b = lighting_basis(*lighting_eigen(stats, lighting_constants), lighting)
        basis = torch.as_tensor(b, dtype=torch.float32, device=device)
    rescale = paper.CC2_LIGHTING_RESCALE if lighting == "sqrt_eigenvalue" else 1.0
    bgr = channel_order == "bgr"
    return Normalizer(normalize, size, mean, channel_mean, channel_std, basis, rescale, bgr)


def _normalize(x: torch.Tensor, mean_crops: torch.Tensor | None, norm: Normalizer) -> torch.Tensor:
    """Mean subtraction in place on a fresh float ``x`` (channels at dim -3)."""
    if norm.mode == "channel_mean_std":
        x.div_(255.0).sub_(norm.channel_mean[:, None, None])
        return x.div_(norm.channel_std[:, None, None])
    return x.sub_(mean_crops)


def _central_mean(norm: Normalizer) -> torch.Tensor:
    return center_crop(norm.mean[None], norm.size)[0]


def finish(crops: torch.Tensor, params: AugmentParams, norm: Normalizer) -> torch.Tensor:
    """Training input from uint8 (or float) crops: float32 (N, 3, s, s) on their device.

    mean_image subtracts the mean image cropped and flipped exactly like each crop (§2);
    mean_image_center subtracts its central crop (CC2); channel_mean_std is torchvision's
    [0,1]/std scale. Then each image gets its lighting shift ``basis @ alpha`` (0-255 units,
    divided by 255 * std in channel_mean_std mode), and is multiplied by ``norm.rescale``.
    """
    x = crops.to(torch.float32, copy=True)  # a fresh tensor: what follows works in place
    mean_crops = None
    if norm.mode == "mean_image":
        means = norm.mean.expand(len(x), -1, -1, -1)
        p = params
        mean_crops = crop_flip(means, p.top, p.left, p.flip, norm.size, p.height, p.width)
    elif norm.mode == "mean_image_center":
        mean_crops = _central_mean(norm)
    x = _normalize(x, mean_crops, norm)
    if norm.basis is not None:
        shift = params.alpha.to(x.device, torch.float32) @ norm.basis.T  # (N, 3), 0-255
        if norm.mode == "channel_mean_std":
            shift = shift / (255.0 * norm.channel_std)
        x.add_(shift[:, :, None, None])
        if norm.rescale != 1.0:
            x.mul_(norm.rescale)
    return x.flip(-3) if norm.bgr else x


def finish_views(
    views: torch.Tensor, positions: Sequence[Position], norm: Normalizer
) -> torch.Tensor:
    """Evaluation input from (N, V, 3, s, s) crops taken at ``positions``; no lighting.

    mean_image subtracts the mean at each view's own position and flip.
    """
    x = views.to(torch.float32, copy=True)
    mean_crops = None
    if norm.mode == "mean_image":
        mean_crops = crop_views(norm.mean[None], positions, norm.size)[0]  # (V, 3, s, s)
    elif norm.mode == "mean_image_center":
        mean_crops = _central_mean(norm)
    x = _normalize(x, mean_crops, norm)
    return x.flip(-3) if norm.bgr else x
