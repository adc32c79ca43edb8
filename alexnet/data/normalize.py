"""Mean subtraction and PCA lighting (§2, §4.1): uint8 crops into the network's float input.

A ``Normalizer`` holds what is precomputed once, float32 on the target device: the mean image
(or torchvision's channel statistics) and the lighting basis. ``finish`` makes training input
from crops and their ``AugmentParams`` (the mean cropped at the same offset and flip, then each
image's lighting shift); ``finish_views`` makes evaluation input from fixed views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from alexnet import paper
from alexnet.data.packed import Stats
from alexnet.data.transforms import AugmentParams, View, center_crop, crop_flip, crop_views
from alexnet.errors import UserError

Normalize = Literal["mean_image", "mean_image_center", "channel_mean_std"]
Lighting = Literal["eigenvalue", "sqrt_eigenvalue", "off"]
LightingConstants = Literal["dataset", "fb", "cuda_convnet2"]
# torchvision's ImageNet normalisation on the [0,1] scale; not a paper constant (spec §5.1, TV)
TV_MEAN = (0.485, 0.456, 0.406)
TV_STD = (0.229, 0.224, 0.225)


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


def finish_views(views: torch.Tensor, positions: Sequence[View], norm: Normalizer) -> torch.Tensor:
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
