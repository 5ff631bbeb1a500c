"""`SampleTable`: the one in-memory description of a data set that every source returns.

A table lists items (image file paths, or an in-memory array of images) with their class
labels and the metric-learning split. It is deliberately plain data (numpy arrays), so that
splitting, folding and sampling are array operations and a table can be checked, saved and
compared without touching the images.

Fields
------
items
    Either a sequence of file paths (``str``; relative paths are resolved against
    ``root``) or a numpy array of images with shape ``(N, H, W)`` or ``(N, H, W, C)``.
labels
    Class labels, shape ``(N,)``. Integers (any value, kept exactly as the official class
    ids) or strings.
split
    ``"train"`` or ``"test"`` per item (the class-disjoint metric-learning split).
is_query, is_gallery
    Booleans per item. For same-set evaluation (CUB, Cars, SOP) every test item is both; for
    In-Shop, query rows search gallery rows only.
super_labels
    Optional coarse labels (SOP super-classes), shape ``(N,)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class SampleTable:
    """Items, labels and split flags of one data set (see the module docstring)."""

    items: Any
    labels: np.ndarray
    split: np.ndarray
    is_query: np.ndarray
    is_gallery: np.ndarray
    super_labels: np.ndarray | None = None
    root: Path | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        n = len(self.items)
        labels = np.asarray(self.labels)
        if labels.dtype.kind == "U" or labels.dtype.kind == "O":
            labels = labels.astype(object)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "split", np.asarray(self.split, dtype="<U5"))
        object.__setattr__(self, "is_query", np.asarray(self.is_query, dtype=bool))
        object.__setattr__(self, "is_gallery", np.asarray(self.is_gallery, dtype=bool))
        if self.super_labels is not None:
            object.__setattr__(self, "super_labels", np.asarray(self.super_labels))
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))
        if not isinstance(self.items, np.ndarray):
            object.__setattr__(self, "items", np.asarray([str(i) for i in self.items],
                                                         dtype=object))
        for field in ("labels", "split", "is_query", "is_gallery", "super_labels"):
            value = getattr(self, field)
            if value is not None and (value.ndim != 1 or len(value) != n):
                raise ValueError(
                    f"SampleTable {self.name!r}: field {field!r} has shape {value.shape}, "
                    f"expected ({n},) to match the {n} items"
                )
        bad = sorted(set(np.unique(self.split)) - set(SPLITS))
        if bad:
            raise ValueError(
                f"SampleTable {self.name!r}: split values must be 'train' or 'test', got {bad}"
            )

    # ----------------------------------------------------------------- basic views
    def __len__(self) -> int:
        return len(self.items)

    @property
    def in_memory(self) -> bool:
        """True when items are image arrays rather than file paths."""
        return isinstance(self.items, np.ndarray) and self.items.dtype != object

    def path(self, index: int) -> Path:
        """Absolute path of item ``index`` (file-backed tables only)."""
        if self.in_memory:
            raise TypeError(f"SampleTable {self.name!r} holds arrays, not file paths")
        path = Path(self.items[index])
        return path if path.is_absolute() or self.root is None else self.root / path

    def classes(self) -> np.ndarray:
        """Sorted unique labels."""
        return _unique(self.labels)

    def subset(self, selector: np.ndarray | Sequence[int]) -> SampleTable:
        """A new table with the rows chosen by a boolean mask or an index array."""
        index = np.asarray(selector)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"mask has shape {index.shape}, expected ({len(self)},)")
            index = np.flatnonzero(index)
        return dataclasses.replace(
            self,
            items=self.items[index],
            labels=self.labels[index],
            split=self.split[index],
            is_query=self.is_query[index],
            is_gallery=self.is_gallery[index],
            super_labels=None if self.super_labels is None else self.super_labels[index],
        )

    def with_split(self, split: str) -> SampleTable:
        """The rows of one split (``"train"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.subset(self.split == split)

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per split: items, classes, queries, gallery items."""
        out = {}
        for split in SPLITS:
            mask = self.split == split
            out[split] = {
                "images": int(mask.sum()),
                "classes": int(len(_unique(self.labels[mask]))) if mask.any() else 0,
                "queries": int((mask & self.is_query).sum()),
                "gallery": int((mask & self.is_gallery).sum()),
            }
        return out

    def check_class_disjoint(self) -> None:
        """Raise when a class appears in both the train and the test split."""
        train = set(_unique(self.labels[self.split == "train"]).tolist())
        test = set(_unique(self.labels[self.split == "test"]).tolist())
        shared = sorted(train & test, key=str)
        if shared:
            raise ValueError(
                f"SampleTable {self.name!r}: {len(shared)} classes are in both train and test "
                f"(first: {shared[:5]}); metric-learning splits must be class-disjoint"
            )


def _unique(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.asarray(sorted(set(values.tolist()), key=lambda v: (str(type(v)), v)),
                          dtype=object)
    return np.unique(values)


def same_set_table(items: Any, labels: Any, split: Any, *, name: str = "custom",
                   root: Path | None = None, super_labels: Any = None) -> SampleTable:
    """A table where every item is both query and gallery (CUB, Cars, SOP style)."""
    n = len(items)
    return SampleTable(items=items, labels=np.asarray(labels), split=np.asarray(split),
                       is_query=np.ones(n, dtype=bool), is_gallery=np.ones(n, dtype=bool),
                       super_labels=super_labels, root=root, name=name)
