"""``python -m alexnet.synthetic OUT``: write the built-in shapes data set.

The set itself is drawn by ``alexnet.data.shapes``; this module is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.data.shapes import SHAPES, draw_shape_set
from alexnet.errors import report_user_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet.synthetic",
        description="Write a small, learnable shapes data set as JPEG files in the ILSVRC-2012 "
        "layout (class folders for train/, a flat val/ with devkit-style labels).",
        epilog="example:\n  python -m alexnet.synthetic data/syn-src\n"
        "  python -m alexnet.prepare data/syn-src data/syn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="output folder (new, or an earlier synthetic set)")
    parser.add_argument(
        "--classes",
        type=int,
        default=10,
        metavar="N",
        help=f"number of classes (shapes), 2..{len(SHAPES)} (default 10)",
    )
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=300,
        metavar="N",
        help="training images per class (default 300, the demo's set)",
    )
    parser.add_argument(
        "--val-per-class",
        type=int,
        default=20,
        metavar="N",
        help="validation images per class (default 20)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    args = parser.parse_args(argv)

    def run() -> int:
        draw_shape_set(args.out, args.classes, args.train_per_class, args.val_per_class, args.seed)
        total = args.classes * (args.train_per_class + args.val_per_class)
        print(f"wrote {total} images of {args.classes} classes to {args.out}")
        return 0

    return report_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
