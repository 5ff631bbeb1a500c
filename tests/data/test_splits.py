"""Class-disjoint train/test split, k validation folds and fold tables."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairdml.data.splits import class_disjoint_folds, class_disjoint_split, fold_tables
from fairdml.data.table import SampleTable


def test_split_first_half_of_sorted_classes_trains():
    labels = np.array([5, 1, 3, 2, 4, 1, 6])
    split = class_disjoint_split(labels)
    assert split.tolist() == ["test", "train", "train", "train", "test", "train", "test"]
    odd = class_disjoint_split(np.array(["c", "a", "b", "e", "d"]))
    assert odd.tolist() == ["train", "train", "train", "test", "test"]  # ceil(5/2) = 3
    assert class_disjoint_split([1, 2, 3, 4], train_fraction=0.75).tolist() == \
        ["train", "train", "train", "test"]


def test_split_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_disjoint_split([7, 7, 7])
    with pytest.raises(ValueError, match="train_fraction"):
        class_disjoint_split([1, 2], train_fraction=1.0)


def _check_folds(labels, folds, num_folds):
    labels = np.asarray(labels)
    assert len(folds) == num_folds
    validated = np.zeros(len(labels), dtype=int)
    classes_per_fold = []
    for train_index, val_index in folds:
        assert train_index.dtype == np.int64 and val_index.dtype == np.int64
        np.testing.assert_array_equal(np.sort(np.concatenate([train_index, val_index])),
                                      np.arange(len(labels)))
        assert not set(labels[train_index].tolist()) & set(labels[val_index].tolist())
        validated[val_index] += 1
        classes_per_fold.append(len(set(labels[val_index].tolist())))
    assert (validated == 1).all()  # every item (so every class) validates exactly once
    assert max(classes_per_fold) - min(classes_per_fold) <= 1
    assert sum(classes_per_fold) == len(set(labels.tolist()))


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 6), min_size=2, max_size=30),
       num_folds=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_folds_partition_classes(counts, num_folds, seed):
    labels = np.repeat(np.arange(len(counts)) * 1000 + 2**30, counts)
    if len(counts) < num_folds:
        with pytest.raises(ValueError, match="classes"):
            class_disjoint_folds(labels, num_folds, seed=seed)
        return
    folds = class_disjoint_folds(labels, num_folds, seed=seed)
    _check_folds(labels, folds, num_folds)


def test_folds_are_deterministic_per_seed_and_accept_strings():
    labels = np.repeat(np.array([f"class{i}" for i in range(20)], dtype=object), 3)
    first = class_disjoint_folds(labels, 4, seed=3)
    again = class_disjoint_folds(labels, 4, seed=3)
    other = class_disjoint_folds(labels, 4, seed=4)
    for (a_train, a_val), (b_train, b_val) in zip(first, again):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_val, b_val)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    _check_folds(labels, first, 4)


def test_folds_errors():
    with pytest.raises(ValueError, match="cannot make 4 class-disjoint folds from 3 classes"):
        class_disjoint_folds([1, 2, 3], 4)
    with pytest.raises(ValueError, match="num_folds"):
        class_disjoint_folds([1, 2, 3], 1)


def _table():
    labels = np.repeat(np.arange(8), 3)
    split = np.where(labels < 6, "train", "test")
    is_query = labels % 2 == 0
    return SampleTable(items=[f"{i}.png" for i in range(len(labels))], labels=labels,
                       split=split, is_query=is_query, is_gallery=~is_query)


def test_fold_tables_split_training_classes_and_seal_the_test():
    table = _table()
    with pytest.raises(ValueError, match="sealed"):
        fold_tables(table, 3, 0)
    train = table.with_split("train")
    seen = set()
    for fold in range(3):
        fit, val = fold_tables(train, 3, fold, seed=1)
        assert len(fit) + len(val) == len(train)
        assert not set(fit.labels.tolist()) & set(val.labels.tolist())
        assert val.is_query.all() and val.is_gallery.all()
        assert (val.split == "train").all()
        seen |= set(val.labels.tolist())
    assert seen == set(range(6))
    with pytest.raises(ValueError, match="fold"):
        fold_tables(train, 3, 3)
