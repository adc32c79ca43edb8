"""``python -m alexnet.predict --checkpoint X IMAGE|DIR ...``: classify image files.

Parses the arguments, calls ``alexnet.inference.photos.classify`` and writes its records as
text, CSV or JSON. The exit code is 0 when every image was classified, 1 when some could not be
read (one line each on stderr), 2 for a bad checkpoint or arguments.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from alexnet import atomic, cli
from alexnet.errors import UserError, report_user_errors
from alexnet.inference import photos
from alexnet.inference.trained import load_trained
from alexnet.log import info

EPILOG = """examples:
  python -m alexnet.predict --checkpoint runs/ilsvrc2012/best.pt photo.jpg
  python -m alexnet.predict --checkpoint runs/demo/best.pt data/synthetic/val --csv --out p.csv
  python -m alexnet.predict --checkpoint torchvision --crops 10 --topk 3 holiday/ --json
  python -m alexnet.predict --checkpoint alexnet-owt-7be5be79.pth cat.png --device cuda
  python -m alexnet.predict --checkpoint torchvision ../shared/data/imagenet_sample_images \\
      --class-ids ../shared/data/imagenet_meta/synset_words.txt --csv --out sample.csv

exit code: 0 every image classified, 1 some files could not be read (one line each on
stderr), 2 a bad checkpoint or arguments."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(
        "python -m alexnet.predict",
        "Classify image files (or every image in folders) with a trained network: the top-k "
        "classes in words with their probabilities.",
        EPILOG,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a .pt written by alexnet.train, 'torchvision' (its ImageNet weights, downloaded "
        "once) or a file holding torchvision's AlexNet state dict",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|DIR", help="files or folders")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument(
        "--crops",
        type=int,
        choices=(1, 10),
        help="1 (centre) or 10 (§4.1's ten patches); default: the checkpoint's eval.views",
    )
    cli.add_inference_options(
        p, batch_size=32, workers_help="decoding processes (default: the cores, at most 8)"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (one list of records)")
    fmt.add_argument("--csv", action="store_true", help="print CSV: file,rank,class,name,prob")
    p.add_argument("--out", type=Path, help="write the predictions to this file instead")
    p.add_argument(
        "--class-ids",
        type=Path,
        metavar="FILE",
        help="class ids in output order, one per line (first word; e.g. synset_words.txt): "
        "for torchvision's weights, whose classes come as names only, so that images in "
        "<wnid>/ folders are checked against their folder",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch-size must be at least 1")
    trained = load_trained(args.checkpoint, args.device)
    if args.class_ids:
        trained.classes = photos.read_class_ids(args.class_ids, len(trained.classes))
    files, problems = photos.find_images(args.inputs)
    for problem in problems:
        info(f"error: {problem}")
    if not files:
        raise UserError("no image files to classify in " + ", ".join(map(str, args.inputs)))
    views = args.crops or trained.cfg.eval.views
    start = time.perf_counter()
    found = photos.classify(
        trained, files, views, args.topk, args.batch_size, args.workers, not args.no_progress
    )
    seconds = time.perf_counter() - start
    _write(found.records, args)
    failed = len(problems) + len(found.failed)
    info(
        f"classified {len(found.records)} of {len(files)} images in {seconds:.1f} s "
        f"({len(found.records) / max(seconds, 1e-9):.1f} images/s, {views} "
        f"view{'s' if views > 1 else ''}, {trained.rt.device}); {failed} failed"
    )
    line = photos.agreement(found.records, args.topk)
    if line:
        info(line)
    return 1 if failed else 0


def _write(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        text = json.dumps(records, indent=1) + "\n"
    elif args.csv:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["file", "rank", "class", "name", "prob"])
        for r in records:
            out.writerows(
                [r["file"], t["rank"], t["class"], t["name"], t["prob"]] for t in r["top"]
            )
        text = buf.getvalue()
    else:
        lines = []
        for r in records:
            lines.append(r["file"])
            lines += [f"  {t['rank']}. {100 * t['prob']:5.1f}%  {t['name']}" for t in r["top"]]
        text = "\n".join(lines) + "\n"
    if args.out:
        atomic.write_text(args.out, text)
        info(f"wrote {args.out}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    sys.exit(main())
