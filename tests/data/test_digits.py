"""The `digits` source: scikit-learn's 1,797 8x8 digits, digits 0-4 train, 5-9 test."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

import fairdml.data as data


def test_digits_counts_and_split():
    table = data.load("digits")
    assert len(table) == 1797
    assert table.in_memory
    assert table.items.dtype == np.uint8 and table.items.shape == (1797, 8, 8)
    train, test = table.with_split("train"), table.with_split("test")
    assert sorted(set(train.labels.tolist())) == [0, 1, 2, 3, 4]
    assert sorted(set(test.labels.tolist())) == [5, 6, 7, 8, 9]
    assert table.summary() == {
        "train": {"images": 901, "classes": 5, "queries": 901, "gallery": 901},
        "test": {"images": 896, "classes": 5, "queries": 896, "gallery": 896},
    }


def test_digits_pixels_are_rescaled_to_0_255():
    table = data.load("digits")
    reference = load_digits()
    assert table.items.max() == 255 and table.items.min() == 0
    expected = np.rint(reference.images * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(table.items, expected)
    np.testing.assert_array_equal(table.labels, reference.target)


def test_digits_ignores_root_and_is_registered(tmp_path):
    assert "digits" in data.names()
    table = data.load("digits", tmp_path / "does-not-matter")
    assert len(table) == 1797
