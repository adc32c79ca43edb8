"""``python -m alexnet.features``: a split's hidden-layer features, or a linear probe on them.

Parses the arguments and calls ``alexnet.inference.features`` (``write_features`` or
``probe``); the .npz holds features (N, D) float32, labels (N,), classes, class_names, layer
and views.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alexnet import atomic, cli
from alexnet.data.packed import PackedSplit
from alexnet.errors import UserError, report_user_errors
from alexnet.inference import features
from alexnet.inference.trained import load_trained
from alexnet.log import info

EPILOG = """examples:
  python -m alexnet.features --checkpoint runs/ilsvrc2012/best.pt --data data/scene15 \\
      --split train --layer fc7 --out scene15-train-fc7.npz
  python -m alexnet.features --checkpoint runs/ilsvrc2012/best.pt --data data/scene15 \\
      --layer fc7 --probe --train-split train --split val --json probe.json
  python -m alexnet.features --checkpoint torchvision --data data/scene15 --layer fc6 --probe

The .npz holds features (N, D) float32, labels (N,), classes, class_names, layer and views."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python -m alexnet.features",
        "Write a split's pool5/fc6/fc7 features (streamed, labels included), or fit a linear "
        "probe (multinomial logistic regression) on one split's features and score it on "
        "another's.",
        EPILOG,
    )
    p.add_argument("--checkpoint", required=True, help="a .pt of ours, or torchvision's weights")
    p.add_argument("--data", type=Path, required=True, help="a prepared data folder")
    p.add_argument("--split", default="val", help="split to extract / score (default val)")
    p.add_argument("--layer", choices=features.LAYERS, default="fc7", help="default fc7")
    p.add_argument("--out", type=Path, help="the .npz to write (extraction)")
    p.add_argument("--probe", action="store_true", help="fit and score a linear probe")
    p.add_argument("--train-split", default="train", help="the probe's training split")
    p.add_argument("--l2", type=float, default=1e-3, help="probe L2 weight (default 1e-3)")
    p.add_argument("--json", type=Path, help="write the probe's results to this JSON file")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="views averaged")
    cli.add_inference_options(p, batch_size=64)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.probe == (args.out is not None):
        raise UserError("give either --out F.npz (write features) or --probe (fit a probe)")
    if args.l2 < 0 or args.batch_size < 1:
        raise UserError("--l2 must be >= 0 and --batch-size >= 1")
    trained = load_trained(
        args.checkpoint, args.device, workers=args.workers, batch_size=args.batch_size
    )
    progress = not args.no_progress
    split = PackedSplit(args.data, args.split)
    if not args.probe:
        features.write_features(trained, split, args.layer, args.out, args.crops, progress)
        info(f"wrote {args.out}")
        return 0
    train = PackedSplit(args.data, args.train_split)
    scores = features.probe(trained, train, split, args.layer, args.l2, args.crops, progress)
    result = {"checkpoint": trained.name, "data": str(args.data), "layer": args.layer}
    result.update(train_split=args.train_split, split=args.split, l2=args.l2, **scores)
    r = result["test"]
    info(
        f"linear probe on {args.layer} ({int(result['train']['n'])} {args.train_split} images): "
        f"{args.split} top-1 error {100 * r['top1_err']:.2f}%, top-5 {100 * r['top5_err']:.2f}% "
        f"(accuracy {100 * r['top1_acc']:.2f}%) on {int(r['n'])} images"
    )
    if args.json:
        atomic.write_json(args.json, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
