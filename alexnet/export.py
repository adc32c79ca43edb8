"""Export a trained network for deployment: ``python -m alexnet.export --checkpoint X``.

Writes a ``torch.export`` program (``.pt2``, load it with ``torch.export.load``) of the
eval-mode network *with its preprocessing*: it takes float32 (N, 3, S, S) RGB crops with 0-255
values (S = 224, or 227 for Caffe's geometry; N any batch size) and returns the logits.
The mean image's centre crop (or torchvision's channel statistics), the channel order and the
paper's test-time dropout scaling are inside, so a deployment needs nothing but the program and
the class names stored beside it (``extra_files["classes.json"]``).

``--torchvision FILE`` also writes our ``owt`` weights as a ``torchvision.models.alexnet``
state dict (the paper's test-time dropout scaling folded into the weights).

TorchScript is not written: it is in maintenance, and ``torch.export`` is its replacement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from alexnet import atomic
from alexnet.data import normalize as N
from alexnet.data import transforms as T
from alexnet.errors import UserError, report_user_errors
from alexnet.inference import Trained, load_trained
from alexnet.log import info
from alexnet.model.lrn import reference_lrn
from alexnet.model.torchvision_weights import to_torchvision

EPILOG = """examples:
  python -m alexnet.export --checkpoint runs/ilsvrc2012/best.pt
  python -m alexnet.export --checkpoint runs/demo/best.pt --out demo.pt2
  python -m alexnet.export --checkpoint runs/torchvision_owt/best.pt --torchvision owt.pth

Use the program:
  program = torch.export.load("best.pt2").module()
  logits = program(crops.float())  # (N, 3, 224, 224) RGB 0-255: e.g. the centre of a 256x256
"""


class Deployed(nn.Module):
    """The network behind the checkpoint's own input normalisation (one centre view)."""

    def __init__(self, trained: Trained) -> None:
        super().__init__()
        self.net = trained.model.eval()
        size = trained.input_size
        self.positions = T.view_positions(size, size, size, 1)  # the whole crop: one view
        norm = trained.normalizer("cpu")
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.export",
        description="Write a torch.export program (.pt2) of the eval-mode network with its "
        "preprocessing: RGB 0-255 crops in, logits out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a .pt written by alexnet.train")
    p.add_argument("--out", type=Path, help="the .pt2 to write (default: beside the checkpoint)")
    p.add_argument(
        "--torchvision", type=Path, metavar="FILE", help="also write a torchvision state dict"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    trained = load_trained(args.checkpoint)
    out = args.out or Path(args.checkpoint).with_suffix(".pt2")
    if out.suffix != ".pt2":
        raise UserError(f"--out {out}: an exported program is a .pt2 file")
    if args.torchvision:  # first: it refuses models torchvision cannot run, before any work
        state = to_torchvision(trained.model.state_dict(), trained.cfg.model)
        atomic.atomic_write(args.torchvision, lambda f: torch.save(state, f))
        info(f"wrote {args.torchvision} (load it into torchvision.models.alexnet())")
    program = export_program(trained)
    meta = {
        "classes": trained.classes,
        "class_names": trained.class_names,
        "input": f"float32 (N, 3, {trained.input_size}, {trained.input_size}) RGB, 0-255",
        "checkpoint": trained.name,
    }
    extra = {"classes.json": json.dumps(meta)}
    atomic.atomic_write(out, lambda f: torch.export.save(program, f, extra_files=extra))
    info(f"wrote {out}: torch.export.load({str(out)!r}).module()(crops) -> logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
