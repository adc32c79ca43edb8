"""Find the images of a raw data set and their classes, without decoding any image.

Accepted layouts of SOURCE (the folder given to ``python -m alexnet.prepare``)::

    SOURCE/train/<class>/*              training images, one folder per class (ImageNet: wnids)
    SOURCE/val/<class>/*                validation images in class folders; the folder may also be
                                        called validation/ or (for sets like 15-Scene) test/
    SOURCE/val/ILSVRC2012_val_*.JPEG    a flat validation folder plus ONE label file:
        devkit ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID per line, file-name order)
            together with an ID->wnid table in map_clsloc.txt form (``wnid ID name`` per line);
        Kaggle LOC_val_solution.csv (``ImageId,PredictionString``; first token = wnid);
        Caffe val.txt (``file sorted_index``), indexing --class-list or the sorted train classes.
    SOURCE/ILSVRC/Data/CLS-LOC/{train,val}   Kaggle's layout, handled like the first one.

The ILSVRC-2012 downloads themselves (the tars, read in place) are inventoried by ``archives.py``
into the same ``Inventory``, each item with its byte range in the archive.

Labels are indices into the sorted class folder names of train/ (ImageNet: 0 = n01440764). The
devkit's IDs are *not* in that order (ID 1 = n02119789, spec §7.3), so they go ID -> wnid -> index.
Label files are recognised by their content (``labels.py``); when not passed they are looked for
by their usual names in SOURCE, SOURCE/val and a devkit data/ folder.

Class names in words come from a ``synset_words.txt`` / ``LOC_synset_mapping.txt`` (``wnid words``)
or ``map_clsloc.txt`` (``wnid ID name``) file, passed or found in SOURCE or a devkit data/ folder;
a class the file does not name (and every class of a set without one) is called by its folder name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.data.labels import (
    LabelFile,
    flat_labels,
    read_class_list,
    read_class_words,
    read_id_map,
    read_label_file,
)
from alexnet.errors import UserError

VAL_FOLDERS = ("val", "validation", "test")  # first existing wins; test/ only with class folders
LABEL_FILE_PATTERNS = (  # searched in this order when --val-labels is not given
    "*validation_ground_truth*.txt",
    "LOC_val_solution*.csv",
    "val.txt",
    "imagenet_2012_validation_synset_labels.txt",
)
ID_MAP_PATTERNS = ("map_clsloc*.txt", "*id_wnid*.txt")
CLASS_LIST_PATTERNS = ("synset_words.txt", "LOC_synset_mapping.txt")
CLASS_WORDS_PATTERNS = CLASS_LIST_PATTERNS + ID_MAP_PATTERNS  # searched for the names in words


@dataclass(frozen=True, slots=True)
class Item:
    """One source image: its split, class index and file (``Inventory.root / name``), or its
    byte range in the split's archive (``archives.py``)."""

    split: str
    label: int
    name: str  # relative to the root, "/"-separated; also the name used in reports
    place: tuple[int, int] | None = None  # (offset, size) in Inventory.archives[split]


@dataclass
class Inventory:
    """What a source tree holds: its classes and images, and everything odd about them."""

    root: Path
    classes: list[str]
    items: list[Item]  # sorted by split (train first), label, name
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> classes without images
    unknown: list[str] = field(default_factory=list)  # "name: why" for images with no known class
    irregular: list[str] = field(default_factory=list)  # entries that are not regular files
    val_source: str = "none"  # how the validation labels were found
    label_files: list[Path] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)  # in words, in class order
    names_source: str = "folder names"  # the file the names in words came from
    archives: dict[str, Path] = field(default_factory=dict)  # split -> the tar its items are in

    def count(self, split: str) -> int:
        return sum(item.split == split for item in self.items)

    def source(self, split: str) -> Path:
        """Where a split's images are read from: its archive, else the root folder."""
        return self.archives.get(split, self.root)

    def describe(self) -> str:
        """The source in words, for reports and messages."""
        return " + ".join(map(str, self.archives.values())) or str(self.root)


def find_root(src: Path) -> Path:
    """The folder holding ``train/``: SOURCE itself or Kaggle's ``ILSVRC/Data/CLS-LOC``."""
    if not src.is_dir():
        problem = "is not a folder" if src.exists() else "does not exist"
        raise UserError(f"source folder {src} {problem}: give the folder that holds train/")
    for root in (src, src / "ILSVRC" / "Data" / "CLS-LOC"):
        if (root / "train").is_dir():
            return root
    raise UserError(
        f"{src} has no train/ folder: expected {src}/train/<class>/<image> (and optionally val/)"
    )


def _scan(folder: Path, rel: str) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Class folders of ``folder`` -> file names, plus loose files and irregular entries."""
    classes: dict[str, list[str]] = {}
    loose: list[str] = []
    irregular: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # .DS_Store and friends
        if entry.is_dir():
            files = classes.setdefault(entry.name, [])
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                name = f"{rel}/{entry.name}/{sub.name}"
                if sub.name.startswith("."):
                    continue
                if sub.is_file():
                    files.append(name)
                else:
                    irregular.append(name)
        elif entry.is_file():
            loose.append(entry.name)
        else:
            irregular.append(f"{rel}/{entry.name}")
    return classes, loose, irregular


def _discover(folders: list[Path], patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        for folder in folders:
            hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
            if hits:
                return hits[0]
    return None


def find_sources(
    src: Path,
    val_labels: Path | None = None,
    id_map: Path | None = None,
    class_list: Path | None = None,
    limit_per_class: int | None = None,
    class_words: Path | None = None,
) -> Inventory:
    """The inventory of ``src``: every (split, label, file), sorted, plus what is odd.

    Args:
        src: the source folder (see the module docstring for the layouts).
        val_labels: label file for a flat validation folder (kind recognised by content).
        id_map: ID -> wnid table for devkit ground truth (map_clsloc.txt form).
        class_list: the class order Caffe's val.txt indices refer to (default: sorted train/).
        limit_per_class: keep only the first N files (by name) of each class and split.
        class_words: the classes' names in words (default: ``class_list`` or a file found in
            SOURCE, see the module docstring; else the folder names).
    """
    root = find_root(Path(src))
    train, loose, irregular = _scan(root / "train", "train")
    if not train:
        tars = [n for n in loose if n.endswith(".tar")]
        hint = (
            f" (it holds {len(tars)} .tar files: give prepare the downloaded "
            "ILSVRC2012_img_train.tar itself, read in place, or extract each to train/<wnid>/)"
        )
        hint = hint if tars else ""
        raise UserError(f"{root / 'train'} has no class folders{hint}")
    classes = sorted(train)
    inventory = Inventory(root=root, classes=classes, items=[], irregular=irregular)
    _name_classes(inventory, Path(src), class_words or class_list)
    inventory.unknown += [f"train/{n}: not inside a class folder" for n in loose]
    per_split = {"train": {c: train[c] for c in classes}}
    val_dir = next((root / n for n in VAL_FOLDERS if (root / n).is_dir()), None)
    if val_dir is not None:
        val, loose, irregular = _scan(val_dir, val_dir.name)
        inventory.irregular += irregular
        if val:
            inventory.val_source = f"class folders in {val_dir.name}/"
            for c in sorted(set(val) - set(classes)):
                inventory.unknown += [f"{n}: class {c} has no train folder" for n in val[c]]
            inventory.unknown += [f"{val_dir.name}/{n}: not inside a class folder" for n in loose]
            per_split["val"] = {c: val.get(c, []) for c in classes}
        elif loose and val_dir.name != "test":  # a flat test/ (Kaggle's) has no labels at all
            given = (val_labels, id_map, class_list)
            per_split["val"] = _flat_val(inventory, Path(src), val_dir, loose, given)
    for split, by_class in per_split.items():
        inventory.missing[split] = [c for c in classes if not by_class[c]]
        for label, c in enumerate(classes):
            files = by_class[c][:limit_per_class] if limit_per_class else by_class[c]
            inventory.items += [Item(split, label, name) for name in files]
    return inventory


def _name_classes(inventory: Inventory, src: Path, words_path: Path | None) -> None:
    """Fill ``inventory.class_names`` from a words file (given or found), else the folder names."""
    folders = [src, inventory.root, src / "devkit" / "data", *sorted(src.glob("*devkit*/data"))]
    words_path = words_path or _discover(folders, CLASS_WORDS_PATTERNS)
    words = read_class_words(Path(words_path)) if words_path else {}
    inventory.class_names = [words.get(c, c) for c in inventory.classes]
    if words_path and any(c in words for c in inventory.classes):
        inventory.names_source = str(words_path)


def _flat_val(
    inventory: Inventory, src: Path, val_dir: Path, files: list[str], paths: tuple[Path | None, ...]
) -> dict[str, list[str]]:
    """Label a flat validation folder from label files given or found beside it."""
    val_labels, id_map_path, class_list_path = paths
    folders = [src, inventory.root, val_dir, src / "devkit" / "data"]
    folders += sorted(src.glob("*devkit*/data"))
    label_path = val_labels or _discover(folders, LABEL_FILE_PATTERNS)
    if label_path is None:
        raise UserError(
            f"{val_dir} is a flat folder of {len(files)} images without labels: pass --val-labels "
            "with the devkit's ILSVRC2012_validation_ground_truth.txt (and --id-map "
            "map_clsloc.txt), Kaggle's LOC_val_solution.csv or Caffe's val.txt"
        )
    labels = read_label_file(Path(label_path))
    used = [labels.path]
    id_map: dict[int, str] | None = None
    class_list: list[str] | None = None
    if labels.kind == "devkit":
        map_path = id_map_path or _discover(folders, ID_MAP_PATTERNS)
        if map_path is None:
            raise UserError(
                f"{labels.path} holds devkit ILSVRC2012_IDs, not sorted-wnid indices: pass "
                "the ID->wnid table with --id-map (map_clsloc.txt: `wnid ID name` per line)"
            )
        id_map = read_id_map(Path(map_path))
        used.append(Path(map_path))
    elif labels.kind == "caffe":
        list_path = class_list_path or _discover(folders, CLASS_LIST_PATTERNS)
        if list_path is not None:
            class_list = read_class_list(Path(list_path))
            used.append(Path(list_path))
    here = {p.name for p in used if p.resolve().parent == val_dir.resolve()}
    files = [n for n in files if n not in here]  # label files kept inside val/ are no images
    return label_flat(inventory, files, val_dir.name, labels, id_map, class_list, used)


def label_flat(
    inventory: Inventory,
    files: list[str],
    folder: str,
    labels: LabelFile,
    id_map: dict[int, str] | None,
    class_list: list[str] | None,
    used: list[Path],
) -> dict[str, list[str]]:
    """Sort the files of a flat validation folder (or archive) into the classes.

    Fills ``unknown``, ``label_files`` and ``val_source`` of ``inventory``; ``class_list`` is the
    order of Caffe val.txt indices (None: the sorted classes), ``used`` the files the labels
    came from. Returns class -> ``folder/name`` of its files.
    """
    if labels.kind == "caffe" and class_list is None:
        top = max(int(v) for v in labels.by_stem.values())
        if top + 1 != len(inventory.classes):
            raise UserError(
                f"{labels.path} uses class indices up to {top} but there are "
                f"{len(inventory.classes)} training classes: pass the class order it refers to "
                "with --class-list synset_words.txt"
            )
    inventory.label_files += used
    kinds = {"devkit": "devkit IDs", "kaggle": "Kaggle CSV", "caffe": "Caffe val.txt"}
    names = " + ".join(p.name for p in used)
    inventory.val_source = f"{kinds.get(labels.kind, 'one wnid per line')} ({names})"
    wnids = flat_labels(files, labels, id_map, class_list or inventory.classes)
    by_class: dict[str, list[str]] = {c: [] for c in inventory.classes}
    for name, wnid in wnids.items():
        rel = f"{folder}/{name}"
        if wnid is None:
            inventory.unknown.append(f"{rel}: no label in {labels.path.name}")
        elif wnid not in by_class:
            inventory.unknown.append(f"{rel}: class {wnid} has no train folder")
        else:
            by_class[wnid].append(rel)
    return by_class
