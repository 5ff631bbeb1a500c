"""Bad input to evaluate() gets a clear error, never a number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairdml import evaluate

X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
Y = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embeddings": np.where(np.eye(6, 3) > 0, np.nan, X)}, "NaN or inf"),
        ({"embeddings": np.where(np.eye(6, 3) > 0, np.inf, X)}, "NaN or inf"),
        ({"labels": Y[:5]}, "6 rows but labels has 5"),
        ({"embeddings": X[:0], "labels": Y[:0]}, "empty"),
        ({"embeddings": X[:, 0]}, "must be 2-D"),
        ({"labels": Y.astype(np.float32)}, "float labels"),
        ({"labels": torch.tensor(Y, dtype=torch.float64)}, "float labels"),
        ({"labels": np.array([1, "a", 2, 3, 4, 5], dtype=object)}, "only integers or only"),
        ({"queries": X}, "given together"),
        ({"queries": X[:, :2], "query_labels": Y}, "dimensions"),
        ({"queries": X, "query_labels": Y[:3]}, "query_labels has 3"),
        ({"queries": X, "query_labels": np.array(list("abcdef"))}, "both be"),
        ({"metrics": ["precision"]}, "unknown metric"),
        ({"metrics": ["recall@x"]}, "recall@<positive int>"),
        ({"recall_ks": (0,)}, "positive integers"),
        ({"distance": "manhattan"}, "distance must be"),
        ({"embeddings": np.vstack([X[:5], np.zeros((1, 3), np.float32)])}, "all-zero rows"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    args = {"embeddings": X, "labels": Y}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        evaluate(args.pop("embeddings"), args.pop("labels"), **args)


def test_query_label_missing_from_gallery_is_counted_not_an_error():
    out = evaluate(X, Y, queries=X[:2], query_labels=[0, 7], metrics=["recall@1"])
    assert out["num_skipped_queries"] == 1 and out["num_queries"] == 1


def test_torch_and_float64_inputs_give_the_numpy_result():
    want = evaluate(X, Y, metrics=["recall", "map@r", "map"])
    assert evaluate(torch.from_numpy(X), torch.from_numpy(Y),
                    metrics=["recall", "map@r", "map"]) == want
    assert evaluate(X.astype(np.float64), Y, metrics=["recall", "map@r", "map"]) == want


def test_one_item_gallery_in_same_set_mode_skips_every_query():
    out = evaluate(X[:1], Y[:1], metrics=["recall@1", "map"])
    assert out["num_skipped_queries"] == 1 and out["num_queries"] == 0
    assert np.isnan(out["recall@1"]) and np.isnan(out["map"])


def test_progress_bar_does_not_change_results():
    g = np.random.default_rng(1)
    x = g.normal(size=(60, 4)).astype(np.float32)
    y = g.integers(0, 6, 60)
    assert evaluate(x, y, progress=True) == evaluate(x, y, progress=False)
