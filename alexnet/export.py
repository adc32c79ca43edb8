"""``python -m alexnet.export --checkpoint X``: a trained network for deployment.

Writes the ``torch.export`` program of ``alexnet.inference.deploy`` (``.pt2``; load it with
``torch.export.load``) with the class names beside it (``extra_files["classes.json"]``), so a
deployment needs nothing but the file. ``--torchvision FILE`` also writes our ``owt`` weights as
a ``torchvision.models.alexnet`` state dict (the paper's test-time dropout scaling folded into
the weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from alexnet import atomic, cli
from alexnet.errors import UserError, report_user_errors
from alexnet.inference.deploy import export_program
from alexnet.inference.trained import load_trained
from alexnet.log import info
from alexnet.model.torchvision_weights import to_torchvision

EPILOG = """examples:
  python -m alexnet.export --checkpoint runs/ilsvrc2012/best.pt
  python -m alexnet.export --checkpoint runs/demo/best.pt --out demo.pt2
  python -m alexnet.export --checkpoint runs/torchvision_owt/best.pt --torchvision owt.pth

Use the program:
  program = torch.export.load("best.pt2").module()
  logits = program(crops.float())  # (N, 3, 224, 224) RGB 0-255: e.g. the centre of a 256x256
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python -m alexnet.export",
        "Write a torch.export program (.pt2) of the eval-mode network with its "
        "preprocessing: RGB 0-255 crops in, logits out.",
        EPILOG,
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
    trained = load_trained(args.checkpoint, "cpu")
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
