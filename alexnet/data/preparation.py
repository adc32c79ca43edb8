"""What ``python -m alexnet.prepare`` does, as one call: find the images, then pack them.

The sources are one folder of images (``sources.py``: train/<class>/ and val/, Kaggle's layout
included), the ILSVRC-2012 downloads themselves (``archives.py``: the training tar, the
validation tar and the devkit, in any order), or a folder that holds those downloads under their
official names. ``--verify`` compares the downloads with their published MD5 sums first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet import paper
from alexnet.data import tars
from alexnet.data.archives import OFFICIAL, find_archive_sources, official_archives, recognise
from alexnet.data.images import Storage
from alexnet.data.labels import WNID
from alexnet.data.pack import pack
from alexnet.data.sources import Inventory, find_root, find_sources
from alexnet.errors import UserError


@dataclass(frozen=True)
class Request:
    """One preparation: the sources, the output folder and the options of the command."""

    sources: tuple[Path, ...]
    out: Path
    storage: Storage = field(default_factory=Storage)
    workers: int = 1
    unit_size: int = 2000
    limit_per_class: int | None = None
    expect: str = "auto"  # "imagenet", "none", or "auto": when the classes are 1000 wnids
    verify: bool = False  # compare the archives' MD5 sums with the published ones first
    val_labels: Path | None = None
    id_map: Path | None = None
    class_list: Path | None = None
    class_words: Path | None = None


def prepare(request: Request) -> dict[str, Any]:
    """Prepare ``request.sources`` into ``request.out`` (resuming); the report (report.json)."""
    inventory = take_inventory(request)
    wnids = all(WNID.fullmatch(c) for c in inventory.classes)
    imagenet = len(inventory.classes) == paper.NUM_CLASSES and wnids
    imagenet = imagenet and not request.limit_per_class
    expect = request.expect == "imagenet" or (request.expect == "auto" and imagenet)
    r = request
    return pack(inventory, r.out, r.storage, r.workers, r.unit_size, expect)


def take_inventory(request: Request) -> Inventory:
    """The images of the sources, from a folder of images or from the archives."""
    r = request
    labels = dict(val_labels=r.val_labels, id_map=r.id_map, class_list=r.class_list)
    more = dict(limit_per_class=r.limit_per_class, class_words=r.class_words)
    archives = _archives(list(r.sources))
    if archives is None:
        if r.verify:
            raise UserError(
                f"--verify checks the downloaded archives' MD5 sums, and {r.sources[0]} is a "
                "folder of images: leave --verify out"
            )
        return find_sources(r.sources[0], **labels, **more)
    if r.verify:
        tars.verify(archives)
    return find_archive_sources(archives, **labels, **more, workers=r.workers)


def _archives(sources: list[Path]) -> dict[str, Path] | None:
    """kind -> archive for archive sources; None for one folder of images."""
    if not sources:
        raise UserError("no source given: a folder of images, or the downloaded archives")
    if len(sources) > 1 and any(s.is_dir() for s in sources):
        folder = next(s for s in sources if s.is_dir())
        raise UserError(f"{folder} is a folder: give one folder, or the archive files, not both")
    src = sources[0]
    if len(sources) > 1 or not src.is_dir():
        return recognise(sources)
    found = official_archives(src)
    if found and not _holds_images(src):
        return found
    tar_files = sorted(p.name for p in src.glob("*.tar*"))
    if tar_files and not found and not _holds_images(src):
        names = ", ".join(OFFICIAL.values())
        raise UserError(
            f"{src} has no train/ folder and none of the downloads {names}; it holds "
            f"{tar_files[0]}: give the archives by name"
        )
    return None  # a folder of images; find_sources explains what is missing


def _holds_images(src: Path) -> bool:
    try:
        find_root(src)
    except UserError:
        return False
    return True
