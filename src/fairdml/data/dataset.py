"""`TableDataset`: a torch ``Dataset`` over a `SampleTable`, and contiguous class targets.

Items are image files (opened with PIL) or rows of an in-memory ``uint8`` array (turned
into PIL images too, so that every preset of `fairdml.data.transforms` sees the same
input type). Each image is converted to ``image_mode`` (``"RGB"`` or ``"L"``) before the
transform: a greyscale file becomes three equal channels for an RGB trunk, a colour file
becomes luminance for a one-channel trunk.

Targets are contiguous integers ``0..K-1`` in the sorted order of the table's classes
(`labels_to_indices`), computed from the labels exactly: class ids above ``2**24`` or
strings never pass through a float.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fairdml.data.table import SampleTable

IMAGE_MODES = ("RGB", "L")


class ImageReadError(OSError):
    """An image file that is missing, unreadable or corrupt; the message names the file."""


def labels_to_indices(labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Map class labels to contiguous targets: ``(indices, classes)``.

    ``classes`` holds the sorted unique labels (integers in numeric order, strings in
    lexicographic order; mixed types grouped by type name) and ``indices[i]`` is the
    position of ``labels[i]`` in ``classes`` (``np.int64``). Integer labels are handled as
    integers throughout, so ``classes[indices]`` reproduces ``labels`` exactly.
    Float labels are refused: a float label is almost always an integer id that went
    through a lossy conversion (float32 cannot tell 2**24 from 2**24 + 1).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    kind = array.dtype.kind
    if kind == "f" or kind == "c":
        raise TypeError(
            f"labels have dtype {array.dtype}; expected integers or strings (float labels "
            "lose integer ids above 2**24: cast them to int64 where they are exact)")
    if kind in "iub" or kind == "U" or kind == "S":
        classes, indices = np.unique(array, return_inverse=True)
        return indices.astype(np.int64).reshape(-1), classes
    values = array.tolist()
    try:
        ordered = sorted(set(values), key=lambda value: (type(value).__name__, value))
    except TypeError as error:
        raise TypeError(f"labels must be hashable and sortable within a type: {error}") from None
    position = {value: i for i, value in enumerate(ordered)}
    classes = np.empty(len(ordered), dtype=object)
    classes[:] = ordered
    indices = np.fromiter((position[value] for value in values), dtype=np.int64,
                          count=len(values))
    return indices, classes


class TableDataset(torch.utils.data.Dataset):
    """``(image_tensor, target)`` pairs for the rows of a `SampleTable`.

    ``transform`` maps a PIL image to a tensor (a preset of `fairdml.data.transforms`).
    ``label_to_index`` fixes the label -> target mapping (to share one mapping between
    data sets); by default it is built from this table with `labels_to_indices`.
    ``image_mode`` is ``"RGB"`` or ``"L"``; by default the transform's ``image_mode``
    attribute, else ``"RGB"``.
    """

    def __init__(self, table: SampleTable, transform: Callable[[Image.Image], Any] | None, *,
                 label_to_index: Mapping[Any, int] | None = None,
                 image_mode: str | None = None) -> None:
        if image_mode is None:
            image_mode = getattr(transform, "image_mode", "RGB")
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
        if table.in_memory:
            _check_image_array(table)
        elif table.root is None and not all(_is_absolute(item) for item in table.items):
            raise ValueError(f"SampleTable {table.name!r} lists relative paths but has no root")
        self.table = table
        self.transform = transform
        self.image_mode = image_mode
        if label_to_index is None:
            self.targets, self.classes = labels_to_indices(table.labels)
        else:
            self.targets = _lookup_targets(table, label_to_index)
            self.classes = None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def load_image(self, index: int) -> Image.Image:
        """Item ``index`` as a PIL image in ``image_mode`` (no transform)."""
        if self.table.in_memory:
            pixels = self.table.items[index]
            mode = "L" if pixels.ndim == 2 else "RGB"
            return Image.fromarray(pixels, mode=mode).convert(self.image_mode)
        return read_image(self.table.path(index), self.image_mode)


def read_image(path: Any, mode: str = "RGB") -> Image.Image:
    """Open and fully decode one image file; any failure is an `ImageReadError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error


def _is_absolute(item: Any) -> bool:
    return Path(str(item)).is_absolute()


def _check_image_array(table: SampleTable) -> None:
    items = table.items
    if items.dtype != np.uint8:
        raise TypeError(f"SampleTable {table.name!r}: in-memory images must be uint8, got "
                        f"{items.dtype}")
    if items.ndim not in (3, 4) or (items.ndim == 4 and items.shape[-1] != 3):
        raise ValueError(f"SampleTable {table.name!r}: in-memory images must have shape "
                         f"(N, H, W) or (N, H, W, 3), got {items.shape}")


def _lookup_targets(table: SampleTable, label_to_index: Mapping[Any, int]) -> np.ndarray:
    labels = table.labels.tolist()
    missing = sorted({label for label in labels if label not in label_to_index}, key=str)
    if missing:
        raise KeyError(f"SampleTable {table.name!r}: {len(missing)} label(s) missing from "
                       f"label_to_index (first: {missing[:5]})")
    return np.fromiter((label_to_index[label] for label in labels), dtype=np.int64,
                       count=len(labels))
