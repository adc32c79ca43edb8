"""Label and class-name files of ImageNet-style data sets, recognised by their content.

Validation label files: the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one
ILSVRC2012_ID per line, in file-name order), Kaggle's ``LOC_val_solution.csv`` and Caffe's
``val.txt``. Tables: ``map_clsloc.txt`` (``wnid ID name``: devkit ID -> wnid) and
``synset_words.txt`` / ``LOC_synset_mapping.txt`` (``wnid words``: the class names in words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.errors import UserError

WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class LabelFile:
    """A parsed validation label file; exactly one of the mappings is filled."""

    kind: str  # "devkit" | "kaggle" | "caffe" | "wnid_lines"
    path: Path
    by_number: dict[int, str | int] = field(default_factory=dict)  # image number -> ID or wnid
    by_stem: dict[str, str | int] = field(default_factory=dict)  # file stem -> wnid or index


def read_id_map(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from a map_clsloc.txt-style table (``wnid ID name`` per line)."""
    table: dict[int, str] = {}
    for number, line in read_lines(path):
        parts = line.split()
        if len(parts) < 2 or not WNID.fullmatch(parts[0]) or not parts[1].isdigit():
            raise UserError(f"{path}:{number}: expected `wnid ID name` (map_clsloc), got {line!r}")
        table[int(parts[1])] = parts[0]
    return table


def read_class_list(path: Path) -> list[str]:
    """Class names in index order: the first token of each line (synset_words.txt style)."""
    return [line.split()[0] for _, line in read_lines(path)]


def read_class_words(path: Path) -> dict[str, str]:
    """Class folder -> name in words, from ``wnid words`` or ``wnid ID name`` lines.

    ``synset_words.txt`` / ``LOC_synset_mapping.txt`` lines give the words after the wnid
    ("tench, Tinca tinca"); ``map_clsloc.txt`` lines give a short name ("kit_fox" -> "kit fox").
    """
    words: dict[str, str] = {}
    for number, line in read_lines(path):
        parts = line.split(maxsplit=2)
        if len(parts) < 2:
            raise UserError(f"{path}:{number}: expected `class words...`, got {line!r}")
        if len(parts) == 3 and parts[1].isdigit() and " " not in parts[2]:  # map_clsloc
            words[parts[0]] = parts[2].replace("_", " ")
        else:
            words[parts[0]] = line.split(maxsplit=1)[1]
    return words


def read_label_file(path: Path, text: str | None = None) -> LabelFile:
    """Parse a validation label file, recognising its kind by its content.

    Args:
        text: the file's content when it was read elsewhere (from inside an archive); ``path``
            then only names it in messages.
    """
    lines = read_lines(path, text)
    if not lines:
        raise UserError(f"validation label file {path} is empty")
    first = lines[0][1]
    if first.startswith("ImageId") or "," in first:
        rows = [line.split(",", 1) for _, line in lines if not line.startswith("ImageId")]
        rows = [r for r in rows if len(r) == 2 and r[1].split()]
        stems = {Path(r[0].strip()).stem: r[1].split()[0] for r in rows}
        return LabelFile("kaggle", path, by_stem=stems)
    parts = first.split()
    if len(parts) == 1:  # one label per line, line k = image k
        tokens = [line for _, line in lines]
        if all(t.isdigit() for t in tokens):
            return LabelFile("devkit", path, by_number={k: int(t) for k, t in enumerate(tokens, 1)})
        if all(WNID.fullmatch(t) for t in tokens):
            return LabelFile("wnid_lines", path, by_number=dict(enumerate(tokens, 1)))
    if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not WNID.fullmatch(parts[0]):
        stems = {}
        for number, line in lines:
            name, _, index = line.rpartition(" ")
            if not index.isdigit():
                raise UserError(f"{path}:{number}: expected `file index` (val.txt), got {line!r}")
            stems[Path(name.strip()).stem] = int(index)
        return LabelFile("caffe", path, by_stem=stems)
    if WNID.fullmatch(parts[0]):
        raise UserError(f"{path} looks like an ID->wnid table: pass it with --id-map instead")
    raise UserError(
        f"{path}: unrecognised label file (first line {first!r}); expected the devkit's "
        "ground truth, Kaggle's LOC_val_solution.csv or Caffe's val.txt"
    )


def read_lines(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    try:
        text = path.read_text() if text is None else text
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _image_number(stem: str) -> int | None:
    digits = re.findall(r"\d+", stem)
    return int(digits[-1]) if digits else None


def flat_labels(
    files: list[str], labels: LabelFile, id_map: dict[int, str] | None, class_list: list[str]
) -> dict[str, str | None]:
    """File name -> wnid (None when the label file has no entry for it)."""
    found: dict[str, str | None] = {}
    for name in files:
        stem = Path(name).stem
        if labels.by_number:
            number = _image_number(stem)
            value = labels.by_number.get(number) if number is not None else None
        else:
            value = labels.by_stem.get(stem)
        if labels.kind == "devkit" and value is not None:
            value = id_map.get(int(value)) if id_map else None
        elif labels.kind == "caffe" and value is not None:
            value = class_list[int(value)] if 0 <= int(value) < len(class_list) else None
        found[name] = value if isinstance(value, str) else None
    return found
