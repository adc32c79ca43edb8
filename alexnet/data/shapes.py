"""A small, learnable data set written as real JPEG files in the ILSVRC-2012 layout.

Each class is one shape (circle, square, triangle, ...) drawn large (50-70% of the shorter side)
with a random colour, size, position and rotation over a cluttered background (a colour wash,
noise, lines and small blobs). Image sizes vary (180-400 px a side), so prepare's resize and
central crop matter. The layout is the real one, including its awkward parts::

    OUT/train/<wnid>/<wnid>_<k>.JPEG              made-up wnids n90000001, n90000002, ...
    OUT/val/ILSVRC2012_val_00000001.JPEG ...      a FLAT folder, as in the ILSVRC-2012 tar
    OUT/ILSVRC2012_validation_ground_truth.txt    devkit style: one ID (1..C) per val image
    OUT/map_clsloc.txt                            `wnid ID name`; IDs in a scrambled order
    OUT/synset_words.txt                          `wnid name` in sorted-wnid order

Three training files are deliberately odd but valid: a grayscale JPEG, a CMYK JPEG and a PNG
named .JPEG. The same seed gives the same bytes. The set is written into a temporary folder
beside ``OUT`` and renamed into place when complete, so an interrupted run leaves no half set.
The command line is ``python -m alexnet.synthetic``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet import atomic
from alexnet.errors import UserError

SHAPES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "stripes",
    "crescent",
    "arrow",
    "ell",
    "dots",
    "hexagon",
)
SIDE = (180, 400)  # image side lengths in pixels, inclusive
LABEL_FILES = ("ILSVRC2012_validation_ground_truth.txt", "map_clsloc.txt", "synset_words.txt")
ODD_FILES = {0: "L", 1: "CMYK", 2: "PNG"}  # class -> how its first training image is saved


def wnid(label: int) -> str:
    """The made-up wnid of class ``label`` (sorted order = label order)."""
    return f"n{90000001 + label:08d}"


def _polygon(kind: str) -> list[tuple[float, float]]:
    """Outline of a polygonal shape in unit coordinates (radius about 1)."""
    if kind in ("square", "triangle", "hexagon", "star"):
        n = {"square": 4, "triangle": 3, "hexagon": 6, "star": 10}[kind]
        radii = [1.0, 0.4] * 5 if kind == "star" else [1.0] * n
        return [
            (r * math.cos(2 * math.pi * k / n), r * math.sin(2 * math.pi * k / n))
            for k, r in enumerate(radii)
        ]
    a = 0.3
    if kind == "cross":
        return [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
    if kind == "arrow":
        return [(-1, -0.2), (0.1, -0.2), (0.1, -0.6), (1, 0), (0.1, 0.6), (0.1, 0.2), (-1, 0.2)]
    if kind == "ell":
        return [(-0.7, -1), (-0.25, -1), (-0.25, 0.55), (0.7, 0.55), (0.7, 1), (-0.7, 1)]
    raise ValueError(f"no polygon for shape {kind!r}")


def _draw_shape(mask: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, t: float):
    """Draw shape ``kind`` (centre cx, cy, radius r, rotation t) in white on a mask."""

    def place(points: list[tuple[float, float]], scale: float = 1.0, dx: float = 0.0):
        c, s = math.cos(t), math.sin(t)
        return [
            (cx + r * scale * ((x + dx) * c - y * s), cy + r * scale * ((x + dx) * s + y * c))
            for x, y in points
        ]

    def disc(scale: float, dx: float, fill: int) -> None:
        (x, y), rr = place([(0.0, 0.0)], 1.0, dx)[0], r * scale
        mask.ellipse((x - rr, y - rr, x + rr, y + rr), fill=fill)

    if kind == "circle":
        disc(1.0, 0.0, 255)
    elif kind == "ring":
        disc(1.0, 0.0, 255), disc(0.6, 0.0, 0)
    elif kind == "crescent":
        disc(1.0, 0.0, 255), disc(0.85, 0.5, 0)
    elif kind == "dots":
        disc(0.42, -0.55, 255), disc(0.42, 0.55, 255)
    elif kind == "stripes":
        bar = [(-1, -0.14), (1, -0.14), (1, 0.14), (-1, 0.14)]
        for dy in (-0.7, 0.0, 0.7):
            mask.polygon(place([(x, y + dy) for x, y in bar]), fill=255)
    else:
        mask.polygon(place(_polygon(kind)), fill=255)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def make_image(rng: np.random.Generator, kind: str) -> Image.Image:
    """One RGB image of shape ``kind`` on a cluttered background, drawn from ``rng``."""
    w, h = (int(v) for v in rng.integers(SIDE[0], SIDE[1] + 1, size=2))
    base = rng.uniform(40, 215, size=3)
    wash = Image.fromarray(rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8))
    wash = np.asarray(wash.resize((w, h), Image.Resampling.BICUBIC), np.int16) // 4 - 32
    back = base.astype(np.int16) + wash + rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(back, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    short = min(w, h)
    for _ in range(int(rng.integers(3, 7))):  # clutter: thin lines and small blobs
        x0, x1 = rng.uniform(0, w, size=2)
        y0, y1 = rng.uniform(0, h, size=2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 6))):
        x, y, rr = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.02, 0.06) * short
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=colour)
    mask = Image.new("L", (w, h), 0)
    r = rng.uniform(0.25, 0.35) * short  # diameter 50-70% of the shorter side
    left, top = (w - short) / 2, (h - short) / 2  # inside the central square prepare keeps
    cx, cy = left + rng.uniform(r, short - r), top + rng.uniform(r, short - r)
    _draw_shape(ImageDraw.Draw(mask), kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
    colour = rng.uniform(0, 255, size=3)
    while abs(_luma(colour) - _luma(base)) < 110:  # a strong contrast with the background
        colour = rng.uniform(0, 255, size=3)
    grain = rng.integers(-10, 11, size=(h, w, 3), dtype=np.int16)
    fill = np.clip(colour.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    return Image.composite(Image.fromarray(fill), image, mask)


def _write(job: tuple[list[int], str, Path, str | None]) -> None:
    """Draw one image from its own seed (so the order of work does not matter) and save it."""
    key, kind, path, odd = job
    image = make_image(np.random.default_rng(key), kind)
    if odd == "PNG":
        image.save(path, "PNG")  # a PNG behind a .JPEG name, like n02105855_2933.JPEG
    else:
        image = image.convert(odd) if odd else image
        image.save(path, "JPEG", quality=90)


def draw_shape_set(
    out: Path,
    num_classes: int = 10,
    train_per_class: int = 300,
    val_per_class: int = 20,
    seed: int = 0,
) -> Path:
    """Draw the shape set into ``out`` (see the module docstring) and return ``out``.

    An ``out`` that already holds the set with the same parameters is kept as it is; one that
    holds a synthetic set with other parameters is replaced.

    Raises:
        UserError: bad counts, or ``out`` holds files that are not an earlier synthetic set.
    """
    out = Path(out)
    if not 2 <= num_classes <= len(SHAPES):
        raise UserError(f"classes must be between 2 and {len(SHAPES)}, got {num_classes}")
    if train_per_class < 1 or val_per_class < 1 or seed < 0:
        raise UserError("images per class must be at least 1 and the seed at least 0")
    params = {
        "classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
    }
    marker = out / "synthetic.json"
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise UserError(f"{out} is not empty: choose a new folder for the synthetic data set")
        if json.loads(marker.read_text()) == params:
            return out
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)  # our own leftover from an interrupted run
    _write_set(work, num_classes, train_per_class, val_per_class, seed)
    atomic.write_json(work / "synthetic.json", params)
    if out.exists():
        shutil.rmtree(out)  # an earlier synthetic set with other parameters (checked above)
    os.replace(work, out)
    return out


def _write_set(
    out: Path, num_classes: int, train_per_class: int, val_per_class: int, seed: int
) -> None:
    """The images and label files of the set, written into the empty folder ``out``."""
    shuffle = np.random.default_rng([seed, 2])
    id_order = shuffle.permutation(num_classes)  # ID k+1 names class id_order[k]
    if id_order[0] == 0:  # like the devkit: ID 1 is not the first class in sorted order
        id_order = np.roll(id_order, -1)
    val_classes = shuffle.permutation(np.repeat(np.arange(num_classes), val_per_class))
    jobs: list[tuple[list[int], str, Path, str | None]] = []
    for c in range(num_classes):
        folder = out / "train" / wnid(c)
        folder.mkdir(parents=True)
        for k in range(train_per_class):
            odd = ODD_FILES.get(c) if k == 0 else None
            jobs.append(([seed, 0, c, k], SHAPES[c], folder / f"{wnid(c)}_{k + 1}.JPEG", odd))
    (out / "val").mkdir()
    for j, c in enumerate(val_classes.tolist(), 1):
        jobs.append(([seed, 1, j], SHAPES[c], out / "val" / f"ILSVRC2012_val_{j:08d}.JPEG", None))
    workers = min(os.cpu_count() or 1, len(jobs) // 64 + 1)
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            pool.map(_write, jobs, chunksize=32)
    else:
        list(map(_write, jobs))
    ids = {int(c): k + 1 for k, c in enumerate(id_order)}
    truth = "".join(f"{ids[c]}\n" for c in val_classes.tolist())
    atomic.write_text(out / LABEL_FILES[0], truth)
    table = "".join(f"{wnid(int(c))} {k + 1} {SHAPES[c]}\n" for k, c in enumerate(id_order))
    atomic.write_text(out / LABEL_FILES[1], table)
    words = "".join(f"{wnid(c)} {SHAPES[c]}\n" for c in range(num_classes))
    atomic.write_text(out / LABEL_FILES[2], words)
