"""Crops and flips (§4.1) as pure, seeded tensor functions; ``normalize.py`` finishes them.

Training augmentation is split so one random draw can be used in two places:

1. ``draw_params(generator, n, ...)`` draws a batch's crop offsets, flips and lighting alphas
   (``AugmentParams``, CPU tensors). Nothing else in this module consumes randomness.
2. ``crop_flip`` cuts the uint8 patches (in a loader worker, or on the device), and
   ``normalize.finish(crops, params, norm)`` makes the float network input on the crops'
   device: the mean image cropped at the *same* offset and flip (§2), then the lighting shift.

Evaluation uses fixed views: ``view_positions`` (centre, or torchvision's ``TenCrop`` order),
``crop_views`` and ``normalize.finish_views``. Pixels are raw 0-255 RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alexnet import paper
from alexnet.errors import UserError

View = tuple[int, int, bool]  # top, left, horizontally flipped
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


def view_positions(height: int, width: int, size: int, views: int) -> list[View]:
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


def crop_views(images: torch.Tensor, positions: Sequence[View], size: int) -> torch.Tensor:
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
