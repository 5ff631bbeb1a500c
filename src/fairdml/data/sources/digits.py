"""``digits``: scikit-learn's bundled handwritten digits, offline, as an in-memory table.

1,797 greyscale 8x8 images of the digits 0-9 (UCI "Optical Recognition of Handwritten
Digits", as shipped by ``sklearn.datasets.load_digits``). Pixel values 0..16 are rescaled
to 0..255 (``round(v * 255 / 16)``) and stored as ``uint8`` with shape ``(N, 8, 8)``.
Class-disjoint split: digits 0-4 train, 5-9 test; every test item is query and gallery.
The data ship with scikit-learn, so ``root`` and ``download`` are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairdml.data import register
from fairdml.data.table import SampleTable, same_set_table

TRAIN_DIGITS = (0, 1, 2, 3, 4)


@register("digits")
def digits(root: Path | None = None, *, download: bool = False) -> SampleTable:
    """The digits table (see the module docstring); ``root`` and ``download`` are unused."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images)
    if raw.min() < 0 or raw.max() > 16:
        raise ValueError(f"sklearn digits pixels outside 0..16: [{raw.min()}, {raw.max()}]")
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    split = np.where(np.isin(labels, TRAIN_DIGITS), "train", "test")
    return same_set_table(images, labels, split, name="digits")
