"""The inventory of ILSVRC-2012 as downloaded: the three archives, read in place.

    ILSVRC2012_img_train.tar       one tar per class (<wnid>.tar), each holding its JPEGs
    ILSVRC2012_img_val.tar         the validation JPEGs, flat (ILSVRC2012_val_00000001.JPEG ...)
    ILSVRC2012_devkit_t12.tar.gz   the validation ground truth (IDs) and data/meta.mat

Each file is recognised by its content (``tars.kind_of``), given by name or found in a folder
under its official name. The outer training tar's headers are listed once; then every class tar
is listed in parallel (headers only, ``tarfile`` seeks past the data). An image becomes an
``Item`` named as if extracted (``train/<wnid>/<member>``, ``val/<member>``) with its byte range
in the archive, so units, resume, order and report are those of the extracted folders, and so
are the bytes of the output. Validation labels come from the devkit (``devkit.py``) or from the
label files of ``--val-labels``, as for a folder.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from tqdm import tqdm

from alexnet.data import tars
from alexnet.data.devkit import ClassTable, Devkit, read_devkit, shipped_table
from alexnet.data.labels import read_class_list, read_class_words, read_id_map, read_label_file
from alexnet.data.sources import Inventory, Item, label_flat
from alexnet.errors import UserError

OFFICIAL = {kind: name for kind, (name, _) in tars.PUBLISHED_MD5.items()}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
ClassMembers = dict[str, list[tars.Member]]
# Listing costs about 60 us per image (a header read and parsed); ILSVRC-2012's 1.28 million
# take a minute of CPU, so they are listed in parallel. Below this many bytes of class tars
# (about 2,400 ImageNet JPEGs) one process lists them sooner than a pool starts.
LIST_IN_PARALLEL = 256 << 20


def official_archives(folder: Path) -> dict[str, Path]:
    """The downloads that ``folder`` holds under their official names: kind -> path."""
    return {kind: folder / name for kind, name in OFFICIAL.items() if (folder / name).is_file()}


def recognise(paths: list[Path]) -> dict[str, Path]:
    """kind ("train", "val", "devkit") -> archive, each file recognised by its content."""
    found: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise UserError(f"{path} {problem}: give the downloaded archives, or one folder")
        kind = tars.kind_of(path)
        if kind in found:
            raise UserError(f"{found[kind]} and {path} are both {OFFICIAL[kind]}: give one")
        found[kind] = path
    return found


def find_archive_sources(
    archives: dict[str, Path],
    val_labels: Path | None = None,
    id_map: Path | None = None,
    class_list: Path | None = None,
    limit_per_class: int | None = None,
    class_words: Path | None = None,
    workers: int = 1,
) -> Inventory:
    """The inventory of the archives (kind -> path, see ``recognise``): every image's split,
    label, name and byte range, sorted as for extracted folders, plus what is odd.

    The label arguments are those of ``sources.find_sources``; given, they take precedence over
    the devkit. ``workers`` processes list the class tars.
    """
    train = archives.get("train")
    if train is None:
        given = ", ".join(map(str, archives.values()))
        raise UserError(f"no training archive ({OFFICIAL['train']}) among {given}: it is needed")
    by_class, unknown, irregular = _list_train(train, workers)
    classes = sorted(by_class)
    inventory = Inventory(train.parent, classes, [], unknown=unknown, irregular=irregular)
    inventory.archives["train"] = train
    devkit = read_devkit(archives["devkit"]) if "devkit" in archives else None
    table = devkit.table if devkit else shipped_table()
    _name_classes(inventory, class_words or class_list, table)
    per_split = {"train": by_class}
    if "val" in archives:
        inventory.archives["val"] = archives["val"]
        labels = (val_labels, id_map, class_list)
        per_split["val"] = _label_val(inventory, archives["val"], labels, devkit)
    for split, members in per_split.items():
        inventory.missing[split] = [c for c in classes if not members[c]]
        for label, c in enumerate(classes):
            kept = members[c][:limit_per_class] if limit_per_class else members[c]
            inventory.items += [Item(split, label, m.name, (m.offset, m.size)) for m in kept]
    return inventory


def _list_train(path: Path, workers: int) -> tuple[ClassMembers, list[str], list[str]]:
    """Class -> its images (named ``train/<wnid>/<file>``, sorted), plus unknown and irregular
    entries, from the outer tar and, in parallel, every class tar in it."""
    with tars.open_file(path) as fd:
        outer = tars.list_tar(fd, 0, os.fstat(fd).st_size, str(path))
    inner = [m for m in outer if m.regular and m.name.endswith(".tar") and "/" not in m.name]
    tars_here = set(inner)
    unknown = [
        f"train/{m.name}: not a class tar" for m in outer if m.regular and m not in tars_here
    ]
    irregular = [f"train/{m.name}" for m in outer if not m.regular and m.name not in ("", ".")]
    if not inner:
        raise UserError(f"{path} holds no class tars (<wnid>.tar): not {OFFICIAL['train']}")
    by_class: ClassMembers = {}
    for m, members in zip(inner, _list_classes(path, inner, workers), strict=True):
        wnid = m.name[: -len(".tar")]
        by_class[wnid] = []
        for x in sorted(members, key=lambda x: x.name):  # as a folder's files are sorted
            if x.name in ("", ".") or x.name.startswith("."):  # the tar's own ./, dot files
                continue
            if x.regular and "/" not in x.name:
                by_class[wnid].append(_renamed(x, f"train/{wnid}/{x.name}"))
            else:
                irregular.append(f"train/{wnid}/{x.name}")
    return by_class, unknown, irregular


def _list_classes(path: Path, inner: list[tars.Member], workers: int) -> list[list[tars.Member]]:
    """The members of each class tar, in order, listed by ``workers`` processes."""
    jobs = [(path, m) for m in inner]
    with tqdm(total=len(jobs), unit="tar", desc="list", disable=None) as bar:
        if workers <= 1 or len(jobs) <= 1 or sum(m.size for m in inner) < LIST_IN_PARALLEL:
            return [_tick(bar, _list_class(job)) for job in jobs]
        with multiprocessing.Pool(min(workers, len(jobs))) as pool:
            return [_tick(bar, r) for r in pool.imap(_list_class, jobs, chunksize=4)]


def _tick(bar: tqdm, result: list[tars.Member]) -> list[tars.Member]:
    bar.update()
    return result


def _list_class(job: tuple[Path, tars.Member]) -> list[tars.Member]:
    """The members of one class tar inside the training archive (run in a worker)."""
    path, member = job
    with tars.open_file(path) as fd:
        return tars.list_tar(fd, member.offset, member.size, f"{member.name} inside {path}")


def _renamed(member: tars.Member, name: str) -> tars.Member:
    return tars.Member(name, member.offset, member.size, member.regular)


def _label_val(
    inventory: Inventory,
    path: Path,
    given: tuple[Path | None, Path | None, Path | None],
    devkit: Devkit | None,
) -> dict[str, list[tars.Member]]:
    """Class -> its validation images (``val/<file>``): the flat val tar labelled by the
    devkit, or by the files given as --val-labels / --id-map / --class-list."""
    with tars.open_file(path) as fd:
        members = tars.list_tar(fd, 0, os.fstat(fd).st_size, str(path))
    files = {m.name: m for m in members if m.regular and not m.name.startswith(".")}
    nested = next((n for n in files if "/" in n), None)
    if nested is not None or not any(n.lower().endswith(IMAGE_SUFFIXES) for n in files):
        example = nested or next(iter(files), "nothing")
        raise UserError(
            f"{path} is not an ILSVRC-2012 archive: it holds {example!r}; expected flat images "
            f"({OFFICIAL['val']}) or one tar per class ({OFFICIAL['train']})"
        )
    inventory.irregular += [
        f"val/{m.name}" for m in members if not m.regular and m.name not in ("", ".")
    ]
    val_labels, id_map, class_list = given
    if val_labels is None and devkit is None:
        raise UserError(
            f"{path} holds {len(files):,} images without labels: give the devkit "
            f"{OFFICIAL['devkit']} as well (or their labels with --val-labels)"
        )
    labels = read_label_file(val_labels) if val_labels else devkit.ground_truth
    used = [labels.path]
    table: ClassTable = devkit.table if devkit else shipped_table()
    ids = read_id_map(id_map) if id_map else table.ids
    order = read_class_list(class_list) if class_list else None
    if labels.kind == "devkit":
        used.append(id_map or table.path)
        _check_known(inventory, ids, devkit)
    by_class = label_flat(inventory, sorted(files), "val", labels, ids, order, used)
    return {c: [_renamed(files[n[4:]], n) for n in names] for c, names in by_class.items()}


def _check_known(inventory: Inventory, ids: dict[int, str], devkit: Devkit | None) -> None:
    """Devkit IDs that name none of the training classes: a devkit whose meta.mat was not read
    (no scipy) for classes that the shipped ILSVRC-2012 table does not know."""
    if set(ids.values()) & set(inventory.classes):
        return
    unread = f"; {devkit.path}'s meta.mat was not read ({devkit.unread})" if devkit else ""
    raise UserError(
        f"the devkit IDs name none of the {len(inventory.classes)} training classes{unread}: "
        "install scipy (pip install scipy) to read meta.mat, or pass --id-map map_clsloc.txt"
    )


def _name_classes(inventory: Inventory, words_path: Path | None, table: ClassTable) -> None:
    """Class names in words: a --class-words file, else the devkit's (or shipped) table."""
    words = read_class_words(words_path) if words_path else table.words
    inventory.class_names = [words.get(c, c) for c in inventory.classes]
    if any(c in words for c in inventory.classes):
        inventory.names_source = str(words_path or table.path)
    else:
        inventory.names_source = "class tar names"
