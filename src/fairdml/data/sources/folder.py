"""``folder``: a user's own images, as a class-per-folder tree or a CSV index.

Three layouts, tried in this order:

CSV
    ``root`` is a ``.csv`` file, or a folder holding ``dataset.csv``. The header names the
    columns ``path,label`` and optionally ``split`` (``train``/``test``), ``is_query`` and
    ``is_gallery`` (``1/0``, ``true/false``, ``yes/no``; default true); other columns are
    an error (a misspelt ``is_query`` must not be ignored). Paths are relative to the
    CSV's folder (or absolute). Labels that are all integers become ``int64``, otherwise
    they stay strings. Without a ``split`` column the classes are split as in the tree
    layout below. Every error names the file and the line.
split tree
    ``root/train/<class>/<image>`` and ``root/test/<class>/<image>``: the split is given.
class tree
    ``root/<class>/<image>`` (torchvision ``ImageFolder`` style): classes sorted by folder
    name, the first ``ceil(train_fraction * K)`` train, the rest test.

In the tree layouts, labels are the class folder names, images are the files with an
image suffix (``IMAGE_SUFFIXES``) anywhere below a class folder, hidden files and folders
are skipped, and every item is query and gallery. Paths are stored relative to ``root``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from fairdml.data import register
from fairdml.data.splits import class_disjoint_split
from fairdml.data.table import SampleTable, same_set_table

CSV_NAME = "dataset.csv"
REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "is_query", "is_gallery")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif",
                            ".tiff", ".webp"})
TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f"})
_INTEGER = re.compile(r"[+-]?\d+")


class CSVFormatError(ValueError):
    """A malformed data set CSV; the message names the file and line."""


@register("folder")
def folder(root: Path | None = None, *, download: bool = False, train_fraction: float = 0.5,
           check_files: bool = True) -> SampleTable:
    """The table of a user's image folder or CSV (see the module docstring).

    ``check_files`` verifies that every CSV path exists (an error names the line).
    """
    if download:
        raise ValueError("the folder data set cannot be downloaded: it is your own images")
    if root is None:
        raise ValueError("folder needs root: an image folder (<class>/<image>, or "
                         "train/<class>/<image> and test/<class>/<image>) or a .csv index")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"folder data set root {root} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise ValueError(f"folder root {root} is a file but not a .csv index")
        return table_from_csv(root, train_fraction=train_fraction, check_files=check_files)
    if (root / CSV_NAME).is_file():
        return table_from_csv(root / CSV_NAME, train_fraction=train_fraction,
                              check_files=check_files)
    if _has_class_folders(root / "train") and _has_class_folders(root / "test"):
        return table_from_split_tree(root)
    return table_from_class_tree(root, train_fraction=train_fraction)


def table_from_class_tree(root: Path, *, train_fraction: float = 0.5) -> SampleTable:
    """``root/<class>/<image>``: sorted classes, first part train (``train_fraction``)."""
    paths, labels = _scan_classes(root, root)
    if not paths:
        raise FileNotFoundError(f"no images found in {root}: expected <class>/<image> "
                                f"files with a suffix in {sorted(IMAGE_SUFFIXES)}")
    label_array = np.array(labels, dtype=object)
    try:
        split = class_disjoint_split(label_array, train_fraction=train_fraction)
    except ValueError as error:
        raise ValueError(f"{root}: {error} (class folders)") from None
    return same_set_table(paths, label_array, split, name=root.name or "folder", root=root)


def table_from_split_tree(root: Path) -> SampleTable:
    """``root/train/<class>/<image>`` and ``root/test/<class>/<image>``."""
    paths, labels, split = [], [], []
    for part in ("train", "test"):
        part_paths, part_labels = _scan_classes(root / part, root)
        paths += part_paths
        labels += part_labels
        split += [part] * len(part_paths)
    shared = sorted(set(lab for lab, s in zip(labels, split) if s == "train")
                    & set(lab for lab, s in zip(labels, split) if s == "test"))
    if shared:
        raise ValueError(f"{root}: classes {shared[:5]} are in both train/ and test/; "
                         "metric-learning splits must be class-disjoint")
    return same_set_table(paths, np.array(labels, dtype=object), split,
                          name=root.name or "folder", root=root)


def table_from_csv(path: Path, *, train_fraction: float = 0.5,
                   check_files: bool = True) -> SampleTable:
    """Rows of a ``path,label[,split,is_query,is_gallery]`` CSV (see the module docstring)."""
    base = path.parent
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise CSVFormatError(f"{path}: the file is empty; expected a header line "
                                 f"'{','.join(REQUIRED_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]'")
        columns = _check_header(path, [name.strip() for name in header])
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise CSVFormatError(f"{path}, line {line}: {len(row)} fields, expected "
                                     f"{len(columns)} ({','.join(columns)})")
            rows.append((line, {name: cell.strip() for name, cell in zip(columns, row)}))
    if not rows:
        raise CSVFormatError(f"{path}: no data rows after the header")
    paths = [_csv_path(path, base, line, row["path"], check_files) for line, row in rows]
    _check_duplicates(path, rows)
    labels = _csv_labels(path, rows)
    lines = [line for line, _ in rows]
    flags = {name: np.array([_csv_bool(path, line, name, row[name]) if name in columns else True
                             for line, row in rows])
             for name in ("is_query", "is_gallery")}
    if "split" in columns:
        split = np.array([_csv_split(path, line, row["split"]) for line, row in rows])
        _check_disjoint(path, lines, labels, split)
    else:
        try:
            split = class_disjoint_split(labels, train_fraction=train_fraction)
        except ValueError as error:
            raise CSVFormatError(f"{path}: no split column, and {error}") from None
    return SampleTable(items=paths, labels=labels, split=split, is_query=flags["is_query"],
                       is_gallery=flags["is_gallery"], root=base, name=path.stem)


def _check_header(path: Path, columns: list[str]) -> list[str]:
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if missing or unknown or duplicated:
        problems = []
        if missing:
            problems.append(f"missing column(s) {missing}")
        if unknown:
            problems.append(f"unknown column(s) {unknown}")
        if duplicated:
            problems.append(f"repeated column(s) {duplicated}")
        raise CSVFormatError(f"{path}, line 1 (header): {'; '.join(problems)}; expected "
                             f"{list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}")
    return columns


def _csv_path(path: Path, base: Path, line: int, value: str, check_files: bool) -> str:
    if not value:
        raise CSVFormatError(f"{path}, line {line}: empty path")
    if check_files and not (base / value).is_file():
        raise CSVFormatError(f"{path}, line {line}: image {value!r} not found "
                             f"(looked for {base / value})")
    return value


def _check_duplicates(path: Path, rows: list[tuple[int, dict[str, str]]]) -> None:
    first_line: dict[str, int] = {}
    for line, row in rows:
        if row["path"] in first_line:
            raise CSVFormatError(f"{path}, line {line}: image {row['path']!r} is already "
                                 f"listed on line {first_line[row['path']]}")
        first_line[row["path"]] = line


def _csv_labels(path: Path, rows: list[tuple[int, dict[str, str]]]) -> np.ndarray:
    values = [row["label"] for _, row in rows]
    for line, row in rows:
        if not row["label"]:
            raise CSVFormatError(f"{path}, line {line}: empty label")
    if all(_INTEGER.fullmatch(value) for value in values):
        integers = [int(value) for value in values]
        try:
            return np.array(integers, dtype=np.int64)
        except OverflowError:
            return _object_array(integers)
    return _object_array(values)


def _object_array(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _csv_split(path: Path, line: int, value: str) -> str:
    split = value.lower()
    if split not in ("train", "test"):
        raise CSVFormatError(f"{path}, line {line}: split {value!r} is not 'train' or 'test'")
    return split


def _csv_bool(path: Path, line: int, column: str, value: str) -> bool:
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise CSVFormatError(f"{path}, line {line}: {column} {value!r} is not a boolean "
                         "(use 1/0, true/false or yes/no)")


def _check_disjoint(path: Path, lines: list[int], labels: np.ndarray, split: np.ndarray) -> None:
    seen: dict[Any, tuple[str, int]] = {}
    for line, label, part in zip(lines, labels.tolist(), split.tolist()):
        if label in seen and seen[label][0] != part:
            other, other_line = seen[label]
            raise CSVFormatError(
                f"{path}, line {line}: class {label!r} is in split {part!r} but line "
                f"{other_line} puts it in {other!r}; metric-learning splits must be "
                "class-disjoint")
        seen.setdefault(label, (part, line))


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(_images_under(sub) for sub in _visible_subfolders(folder))


def _visible_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _scan_classes(folder: Path, root: Path) -> tuple[list[str], list[str]]:
    paths: list[str] = []
    labels: list[str] = []
    for class_folder in _visible_subfolders(folder):
        images = _images_under(class_folder)
        if not images:
            raise ValueError(f"class folder {class_folder} holds no image (expected files with "
                             f"a suffix in {sorted(IMAGE_SUFFIXES)}); remove it or add its "
                             "images: an empty class cannot be sampled or evaluated")
        paths += [p.relative_to(root).as_posix() for p in images]
        labels += [class_folder.name] * len(images)
    return paths, labels
