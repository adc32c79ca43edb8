"""The ILSVRC-2012 development kit, read in memory, and the class table shipped with alexnet.

``ILSVRC2012_devkit_t12.tar.gz`` holds ``data/ILSVRC2012_validation_ground_truth.txt`` (the
ILSVRC2012_ID, 1-1000, of validation image k on line k) and ``data/meta.mat``, whose ``synsets``
struct array maps those IDs to wnids and words: the 1,000 classes are its leaves
(``num_children == 0``), the other entries WordNet's inner nodes. ``meta.mat`` is read with
``scipy.io.loadmat``, an optional dependency (``pip install 'alexnet[devkit]'``).

The same public 1,000-row table (ID, wnid, words) ships with alexnet (``ilsvrc2012_classes.tsv``).
It labels the validation images when scipy is not installed, and a ``meta.mat`` that is read is
checked against it: a wnid known to both must have the same ID, so a damaged or edited devkit
cannot silently relabel images. A devkit of other classes (none known to the table) is used as
it is.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from alexnet.data.labels import WNID, LabelFile, read_label_file
from alexnet.errors import UserError

GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"
TABLE = Path(__file__).with_name("ilsvrc2012_classes.tsv")


@dataclass(frozen=True)
class ClassTable:
    """ILSVRC2012_ID -> wnid for the classes, their words, and where the table comes from."""

    ids: dict[int, str]
    words: dict[str, str]  # wnid -> "tench, Tinca tinca"
    path: Path  # names the source in reports (a file, or a member of the devkit)


@dataclass(frozen=True)
class Devkit:
    """What the devkit tarball says: the validation ground truth and the class table."""

    path: Path
    ground_truth: LabelFile
    table: ClassTable  # meta.mat's (checked against the shipped one), else the shipped one
    unread: str = ""  # why meta.mat was not read ("" when it was)


def shipped_table() -> ClassTable:
    """The ILSVRC-2012 class table that ships inside the package."""
    ids, words = {}, {}
    for line in TABLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            number, wnid, text = line.split("\t")
            ids[int(number)] = wnid
            words[wnid] = text
    return ClassTable(ids, words, TABLE)


def read_devkit(path: Path) -> Devkit:
    """Read the ground truth and ``meta.mat`` from the devkit tarball, without extracting it.

    Raises:
        UserError: not a readable .tar.gz, no ground truth in it, or a ``meta.mat`` that cannot
            be read or disagrees with the shipped ILSVRC-2012 table.
    """
    files = _read_members(path, (GROUND_TRUTH, META))
    if GROUND_TRUTH not in files:
        raise UserError(
            f"{path} holds no {GROUND_TRUTH}: not the ILSVRC-2012 devkit "
            "(ILSVRC2012_devkit_t12.tar.gz); give that, or the labels with --val-labels"
        )
    truth = read_label_file(path / GROUND_TRUTH, files[GROUND_TRUTH].decode("utf-8", "replace"))
    if truth.kind != "devkit":
        raise UserError(f"{path}: {GROUND_TRUTH} does not hold one ILSVRC2012_ID per line")
    shipped = shipped_table()
    if META not in files:
        return Devkit(path, truth, shipped, unread=f"{path.name} holds no {META}")
    table = read_meta_mat(files[META], path / META)
    if table is None:
        return Devkit(path, truth, shipped, unread="scipy is not installed")
    check_table(table, shipped)
    return Devkit(path, truth, table)


def _read_members(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The members of a .tar.gz whose names end with ``wanted`` (a top folder may precede)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                for want in wanted:
                    if info.isreg() and (info.name == want or info.name.endswith("/" + want)):
                        found[want] = tar.extractfile(info).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{path} is not a readable .tar.gz ({err}): download the devkit again"
        ) from None
    return found


def read_meta_mat(data: bytes, path: Path) -> ClassTable | None:
    """The classes (leaf synsets) of a devkit ``meta.mat``; None when scipy is not installed."""
    try:
        from scipy.io import loadmat
    except ImportError:
        return None
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"].reshape(-1)
        rows = [
            (int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]), int(s["num_children"]))
            for s in synsets
        ]
    except Exception as err:  # noqa: BLE001 - whatever fails, it is not a meta.mat we can read
        raise UserError(
            f"{path} is not the devkit's meta.mat ({type(err).__name__}: {err})"
        ) from None
    leaves = [r for r in rows if r[3] == 0]
    ids = {number: wnid for number, wnid, _, _ in leaves}
    if not leaves or len(ids) != len(leaves) or not all(WNID.fullmatch(w) for w in ids.values()):
        raise UserError(f"{path}: its synsets are not classes with distinct IDs and wnids")
    return ClassTable(ids, {wnid: words for _, wnid, words, _ in leaves}, path)


def check_table(table: ClassTable, reference: ClassTable) -> None:
    """Every wnid that both tables know must have the same ID in both."""
    known = {wnid: number for number, wnid in reference.ids.items()}
    wrong = [(n, w) for n, w in sorted(table.ids.items()) if w in known and known[w] != n]
    if wrong:
        number, wnid = wrong[0]
        raise UserError(
            f"{table.path} gives {wnid} the ID {number}, the ILSVRC-2012 devkit gives it "
            f"{known[wnid]} ({len(wrong)} classes differ): a damaged or edited devkit; "
            "download ILSVRC2012_devkit_t12.tar.gz again"
        )
