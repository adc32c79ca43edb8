"""``python -m alexnet.prepare SOURCE... OUT``: resize raw images to 256x256 shards, once.

SOURCE is a folder of images, or the ILSVRC-2012 downloads (read in place, nothing extracted).
The work is done by ``alexnet.data.preparation``; this module is its command line: arguments,
checks, and a short summary with warnings for anything that needs attention.
``--check DATA`` instead verifies every record of a prepared set (``alexnet.data.check``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from alexnet.data.check import check_data
from alexnet.data.images import Storage
from alexnet.data.preparation import Request, prepare
from alexnet.errors import UserError, report_user_errors
from alexnet.runtime import available_cpus

EXAMPLES = """examples:
  python -m alexnet.prepare ILSVRC2012_img_train.tar ILSVRC2012_img_val.tar \\
      ILSVRC2012_devkit_t12.tar.gz data/ilsvrc2012
      ImageNet as downloaded: read in place, nothing extracted (add --verify to check MD5s)
  python -m alexnet.prepare /downloads data/ilsvrc2012
      the same, from the folder that holds those three files
  python -m alexnet.prepare /data/imagenet data/ilsvrc2012
      ImageNet with val/ sorted into wnid folders, or flat with the devkit files beside it
  python -m alexnet.prepare /data/imagenet data/ilsvrc2012 \\
      --val-labels ILSVRC2012_validation_ground_truth.txt --id-map map_clsloc.txt
  python -m alexnet.prepare /data/kaggle data/ilsvrc2012 --val-labels LOC_val_solution.csv
  python -m alexnet.prepare /data/imagenet data/ilsvrc2012 --class-words synset_words.txt
  python -m alexnet.prepare ../shared/data/scene15 data/scene15 --limit-per-class 20
  python -m alexnet.synthetic data/syn-src && python -m alexnet.prepare data/syn-src data/syn
  python -m alexnet.prepare --check data/ilsvrc2012
      verify every record's checksum; names each bad one (exit 1 if any)

Re-running the same command resumes an interrupted preparation. The output folder is ready
when it holds meta.json; report.json lists converted, skipped and missing files."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.prepare",
        usage="%(prog)s [options] SOURCE [SOURCE ...] OUT\n       %(prog)s --check DATA",
        description="Resize raw images once to 256x256 (shorter side to 256, central crop, "
        "paper §2) and pack them into shards with an index, the mean image and the RGB "
        "covariance.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="SOURCE ... OUT",
        help="SOURCE: a folder with train/<class>/ and val/ (or test/); or the ILSVRC-2012 "
        "downloads (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, "
        "ILSVRC2012_devkit_t12.tar.gz, any order), or the folder that holds them. OUT: the "
        "output folder (created; resumed if unfinished)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="first compare the downloads' MD5 sums with the published ones",
    )
    p.add_argument(
        "--check",
        type=Path,
        metavar="DATA",
        help="instead: verify every record of the prepared set DATA against its checksum, on "
        "--workers processes; names each bad one; exit 1 if any is",
    )
    _add_label_arguments(p)
    _add_storage_arguments(p)
    return p


def _add_label_arguments(p: argparse.ArgumentParser) -> None:
    """Where the validation labels, the class order and the class names in words come from."""
    p.add_argument(
        "--val-labels",
        type=Path,
        metavar="FILE",
        help="labels of a flat val/ folder: devkit ground truth (IDs), Kaggle "
        "LOC_val_solution.csv or Caffe val.txt; recognised by content",
    )
    p.add_argument(
        "--id-map",
        type=Path,
        metavar="FILE",
        help="ID->wnid table for devkit IDs, map_clsloc.txt form (`wnid ID name`)",
    )
    p.add_argument(
        "--class-list",
        type=Path,
        metavar="FILE",
        help="class order of Caffe val.txt indices (synset_words.txt); "
        "default: sorted train folders",
    )
    p.add_argument(
        "--class-words",
        type=Path,
        metavar="FILE",
        help="class names in words for figures: synset_words.txt (`wnid words`) or "
        "map_clsloc.txt; default: --class-list or such a file in SOURCE, else folder names",
    )


def _add_storage_arguments(p: argparse.ArgumentParser) -> None:
    """How images are stored, and how the work is split and checked."""
    p.add_argument(
        "--encoding",
        choices=("jpeg", "raw"),
        default="jpeg",
        help="jpeg (default, 4:4:4) or raw uint8 pixels (4-6x larger, no decoding)",
    )
    p.add_argument(
        "--resize",
        choices=("shorter_side", "warp"),
        default="shorter_side",
        help="shorter_side (default, paper §2: shorter side to 256, central 256x256) or warp "
        "(Caffe: the whole image to 256x256, aspect ratio ignored)",
    )
    p.add_argument(
        "--quality", type=int, default=95, metavar="Q", help="JPEG quality (default 95, as CC2)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=available_cpus(),
        metavar="N",
        help="worker processes (default: all cores, here %(default)s)",
    )
    p.add_argument(
        "--limit-per-class",
        type=int,
        metavar="N",
        help="keep only the first N images of each class per split (quick subsets)",
    )
    p.add_argument(
        "--unit-size",
        type=int,
        default=2000,
        metavar="N",
        help="images per unit of work and per shard (default 2000)",
    )
    p.add_argument(
        "--expect",
        choices=("auto", "imagenet", "none"),
        default="auto",
        help="check ILSVRC-2012 counts and classes; auto: when there are 1000 wnid "
        "classes and no --limit-per-class",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        if args.paths:
            parser.error("--check DATA takes no SOURCE or OUT")
        return report_user_errors(lambda: check_data(args.check, args.workers))
    if len(args.paths) < 2:
        parser.error("give the source(s) and the output folder: SOURCE [SOURCE ...] OUT")
    return report_user_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    for flag in ("workers", "unit_size", "limit_per_class"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be between 1 and 100, got {args.quality}")
    start = time.perf_counter()
    *sources, out = args.paths
    storage = Storage(args.encoding, args.quality, resize=args.resize)
    options = ("workers", "unit_size", "limit_per_class", "expect", "verify")
    options += ("val_labels", "id_map", "class_list", "class_words")
    request = Request(tuple(sources), out, storage, **{k: getattr(args, k) for k in options})
    report = prepare(request)
    print_summary(out, report, storage, time.perf_counter() - start)
    return 0


def print_summary(out: Path, report: dict[str, Any], storage: Storage, seconds: float) -> None:
    """A few lines on stdout; anything that needs attention as warnings on stderr."""
    counts = " + ".join(f"{n:,} {split}" for split, n in report["counts"].items())
    form = f"jpeg q{storage.quality}" if storage.encoding == "jpeg" else "raw"
    print(
        f"prepared {counts} images into {out} ({form}, {storage.size}x{storage.size}) "
        f"in {seconds:.1f} s"
    )
    kinds = Counter(c["was"] for c in report["converted"])
    conv = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    print(f"converted to RGB: {conv}; skipped: {len(report['skipped'])}")
    mean, eig = report["stats"]["mean_rgb"], report["stats"]["eigval"]
    print(
        f"train mean RGB {mean[0]:.2f} {mean[1]:.2f} {mean[2]:.2f}; RGB covariance eigenvalues "
        f"{eig[0]:.1f} {eig[1]:.1f} {eig[2]:.1f} (0-255 scale)"
    )
    print(f"validation labels: {report['val_labels']}; details in {out / 'report.json'}")
    print(f"class names: {report['class_names']}")
    warn = []
    warn += [f"skipped {s['file']}: {s['reason']}" for s in report["skipped"][:5]]
    more = len(report["skipped"]) - 5
    warn += [f"... and {more} more skipped files (see report.json)"] * (more > 0)
    warn += [f"{len(report['warnings'])} PIL warnings (see report.json)"] * bool(report["warnings"])
    for key, what in (
        ("unknown_class_files", "files of unknown class"),
        ("not_regular_files", "entries that are not regular files"),
    ):
        if report[key]:
            warn.append(f"{len(report[key])} {what} ignored, e.g. {report[key][0]}")
    for split, missing in report["missing_classes"].items():
        if missing and not report["imagenet_check"]:
            warn.append(f"{split}: {len(missing)} classes have no images, e.g. {missing[0]}")
    warn += [f"not the ILSVRC-2012 release: {p}" for p in report["imagenet_check"] or []]
    for line in warn:
        print(f"warning: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
