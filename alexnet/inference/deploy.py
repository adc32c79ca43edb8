"""The deployable form of a trained network: a ``torch.export`` program with its preprocessing.

``export_program`` exports the eval-mode network behind its own input normalisation: it takes
float32 (N, 3, S, S) RGB crops with 0-255 values (S = 224, or 227 for Caffe's geometry; N any
batch size) and returns the logits. The mean image's centre crop (or torchvision's channel
statistics), the channel order and the paper's test-time dropout scaling are inside, and the
fused LRN custom op is written out in ATen ops, so loading the program needs torch alone.
TorchScript is not offered: it is in maintenance, and ``torch.export`` is its replacement.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.inference.trained import Trained
from alexnet.model.lrn import reference_lrn


class Deployed(nn.Module):
    """The network behind the checkpoint's own input normalisation (one centre view)."""

    def __init__(self, trained: Trained) -> None:
        super().__init__()
        self.net = trained.model.eval()
        size = trained.input_size
        self.positions = T.view_positions(size, size, size, 1)  # the whole crop: one view
        norm = trained.normalizer()
        if norm.mean is not None:  # the training images' mean, at the eval centre position
            norm = dataclasses.replace(norm, mean=T.center_crop(norm.mean[None], size)[0])
        self.norm = norm

    def forward(self, images: Tensor) -> Tensor:
        x = N.finish_views(images[:, None], self.positions, self.norm)[:, 0]
        return self.net(x)


def _plain_lrn(
    x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
) -> Tensor:
    """``alexnet::lrn`` in plain ATen ops (the same formula, ``lrn.reference_lrn``)."""
    return reference_lrn(torch.relu(x) if relu else x, size, alpha, beta, k, groups)


def export_program(trained: Trained) -> torch.export.ExportedProgram:
    """``torch.export`` of ``Deployed(trained)`` with a dynamic batch size, in ATen ops only:
    the fused LRN custom op is written out, so loading the program needs torch alone."""
    size = trained.input_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(
            Deployed(trained), (example,), dynamic_shapes={"images": {0: batch}}
        )
    table = torch.export.default_decompositions()
    table[torch.ops.alexnet.lrn.default] = _plain_lrn
    return program.run_decompositions(table)
