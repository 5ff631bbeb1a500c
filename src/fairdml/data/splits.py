"""Class-disjoint splits: train/test by sorted class order, and k validation folds.

Metric learning evaluates on classes never seen in training, so every split here divides
*classes*, never items of one class. The train/test split follows the field's convention
(CUB-200, Cars196, Omniglot in this package): classes sorted, the first half trains, the
second half tests. Validation folds follow the reality-check protocol (Musgrave et al.,
"A Metric Learning Reality Check", ECCV 2020): the training classes are dealt into k
folds; fold i validates on its classes while the other k-1 folds train.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fairdml.data.dataset import labels_to_indices
from fairdml.data.table import SampleTable


def class_disjoint_split(labels: Any, *, train_fraction: float = 0.5) -> np.ndarray:
    """``"train"``/``"test"`` per item: the first classes in sorted order train.

    ``labels`` is a label array or a `SampleTable`. The number of training classes is
    ``ceil(train_fraction * K)`` (so an odd class count gives training the extra class),
    kept between 1 and ``K - 1`` so that both splits exist; fewer than two classes is an
    error.
    """
    if isinstance(labels, SampleTable):
        labels = labels.labels
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    indices, classes = labels_to_indices(labels)
    num_classes = len(classes)
    if num_classes < 2:
        raise ValueError(f"a class-disjoint split needs at least 2 classes, got {num_classes}")
    num_train = min(max(math.ceil(train_fraction * num_classes), 1), num_classes - 1)
    return np.where(indices < num_train, "train", "test")


def class_disjoint_folds(labels: Any, num_folds: int, *,
                         seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``num_folds`` pairs ``(train_index, val_index)`` of item positions, split by class.

    Classes are shuffled with ``seed`` and dealt round-robin, so fold class counts differ
    by at most one, each class validates in exactly one fold, and the folds' validation
    sets partition the items. Index arrays are sorted ``np.int64``. The result depends only
    on the set of labels and ``seed``.
    """
    if isinstance(labels, SampleTable):
        labels = labels.labels
    if not isinstance(num_folds, (int, np.integer)) or isinstance(num_folds, bool) \
            or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    indices, classes = labels_to_indices(labels)
    if len(classes) < num_folds:
        raise ValueError(f"cannot make {num_folds} class-disjoint folds from "
                         f"{len(classes)} classes: every fold needs at least one class")
    order = np.random.default_rng(seed).permutation(len(classes))
    fold_of_class = np.empty(len(classes), dtype=np.int64)
    fold_of_class[order] = np.arange(len(classes)) % num_folds
    fold_of_item = fold_of_class[indices]
    return [(np.flatnonzero(fold_of_item != fold), np.flatnonzero(fold_of_item == fold))
            for fold in range(num_folds)]


def fold_tables(train_table: SampleTable, num_folds: int, fold: int,
                seed: int = 0) -> tuple[SampleTable, SampleTable]:
    """Split the training table into (fit table, validation table) for fold ``fold``.

    Only training rows are accepted: the test split stays sealed. The validation table is
    evaluated same-set (every row is a query and a gallery item); its rows keep
    ``split == "train"`` because they are training-class data.
    """
    if (train_table.split != "train").any():
        raise ValueError(f"fold_tables takes training rows only; SampleTable "
                         f"{train_table.name!r} has {int((train_table.split != 'train').sum())} "
                         "test rows (use table.with_split('train'); the test split is sealed)")
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {num_folds}), got {fold!r}")
    fit_index, val_index = class_disjoint_folds(train_table.labels, num_folds, seed=seed)[fold]
    fit = train_table.subset(fit_index)
    val = train_table.subset(val_index)
    val = dataclasses.replace(val, is_query=np.ones(len(val), dtype=bool),
                              is_gallery=np.ones(len(val), dtype=bool))
    return fit, val
