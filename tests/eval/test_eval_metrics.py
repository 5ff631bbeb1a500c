"""Retrieval metrics: hand-computed cases, brute force with exact ties, PML oracle."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from eval_bruteforce import retrieval as brute_retrieval

from fairdml import evaluate

RETRIEVAL = ["recall", "r_precision", "map@r", "map"]


def test_hand_computed_same_set_on_a_line():
    # Points 0, 1, 3, 7, 8 on a line, labels a a b b a (rankings worked out by hand).
    x = np.array([[0, 0], [1, 0], [3, 0], [7, 0], [8, 0]], dtype=np.float32)
    y = np.array(["a", "a", "b", "b", "a"])
    out = evaluate(x, y, metrics=RETRIEVAL, recall_ks=(1, 2, 4), distance="euclidean")
    assert out["recall@1"] == pytest.approx(0.4)
    assert out["recall@2"] == pytest.approx(0.6)
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["r_precision"] == pytest.approx(0.2)
    assert out["map@r"] == pytest.approx(0.2)
    assert out["map"] == pytest.approx(0.55)
    assert out["num_queries"] == 5 and out["num_skipped_queries"] == 0


def test_hand_computed_query_gallery_with_ties():
    # Cosine 1 for gallery items 1, 2, 3 (ties -> lower index first): B A A, then B, then A.
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0, 1], [1, 0], [1, 0], [2, 0], [-1, 0]], dtype=np.float32)
    gl = np.array([1, 1, 0, 0, 0])
    out = evaluate(g, gl, queries=q, query_labels=[0], metrics=RETRIEVAL, recall_ks=(1, 2))
    assert out["recall@1"] == 0.0 and out["recall@2"] == 1.0
    assert out["r_precision"] == pytest.approx(2 / 3)
    assert out["map@r"] == pytest.approx(7 / 18)
    assert out["map"] == pytest.approx(53 / 90)


def test_singletons_and_unmatched_queries_are_skipped_and_counted():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    out = evaluate(x, [5, 5, 6, 7], metrics=RETRIEVAL, recall_ks=(1,))
    assert out["num_queries"] == 2 and out["num_skipped_queries"] == 2
    assert out["recall@1"] == 1.0 and out["map"] == 1.0
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out = evaluate(x, [5, 5, 6, 7], queries=q, query_labels=[5, 99], metrics=RETRIEVAL)
    assert out["num_queries"] == 1 and out["num_skipped_queries"] == 1
    assert out["recall@1"] == 1.0 and out["map@r"] == 1.0


def test_labels_above_2_to_the_24_negative_and_strings_compare_exactly():
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 4)).astype(np.float32)
    small = g.integers(0, 8, 40)
    want = evaluate(x, small, metrics=RETRIEVAL)
    for labels in (small + 2**24, -small - 2**40, np.array([f"c{v}" for v in small]),
                   small.astype(np.uint64) + np.uint64(2**63), torch.from_numpy(small + 2**53)):
        assert evaluate(x, labels, metrics=RETRIEVAL) == want
    # 2**24 and 2**24 + 1 collide as float32: they must stay two classes.
    merged = evaluate(x, np.zeros(40, dtype=np.int64), metrics=RETRIEVAL)
    split = evaluate(x, 2**24 + (small % 2), metrics=RETRIEVAL)
    assert split != merged


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_same_set_matches_brute_force(distance, seed):
    g = np.random.default_rng(seed)
    x = g.normal(size=(90, 5)).astype(np.float32)
    y = g.integers(0, 12, 90)
    ks = (1, 3, 10, 200)
    got = evaluate(x, y, metrics=RETRIEVAL, recall_ks=ks, distance=distance)
    want = brute_retrieval(x, y, recall_ks=ks, distance=distance)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("same_set", [True, False])
def test_integer_embeddings_with_many_exact_ties_match_brute_force(same_set):
    # Small integers: squared distances are exact in float32 and float64, so the tie
    # structure is identical in both and the lower-index rule decides.
    g = np.random.default_rng(7)
    x = g.integers(-1, 2, size=(70, 3)).astype(np.float32)
    y = g.integers(0, 5, 70)
    q = g.integers(-1, 2, size=(30, 3)).astype(np.float32) if not same_set else None
    ql = g.integers(0, 6, 30) if not same_set else None
    got = evaluate(x, y, queries=q, query_labels=ql, metrics=RETRIEVAL, recall_ks=(1, 5, 20),
                   distance="euclidean", memory_budget=150_000)
    want = brute_retrieval(x, y, q, ql, recall_ks=(1, 5, 20), distance="euclidean")
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_perfect_embeddings_score_one():
    g = np.random.default_rng(3)
    centres = np.eye(6, dtype=np.float32) * 10
    y = np.repeat(np.arange(6), 5)
    x = centres[y] + 0.01 * g.normal(size=(30, 6)).astype(np.float32)
    out = evaluate(x, y, recall_ks=(1, 4))
    for key in ("recall@1", "recall@4", "r_precision", "map@r", "map", "nmi", "f1"):
        assert out[key] == pytest.approx(1.0), key


def test_invariant_to_permutation_and_scaling():
    g = np.random.default_rng(4)
    x = g.normal(size=(80, 6)).astype(np.float32)
    y = g.integers(0, 10, 80)
    base = evaluate(x, y, metrics=RETRIEVAL)
    perm = g.permutation(80)
    permuted = evaluate(x[perm], y[perm], metrics=RETRIEVAL)
    scaled = evaluate(x * g.uniform(0.5, 4.0, size=(80, 1)).astype(np.float32), y,
                      metrics=RETRIEVAL)
    for key in base:
        assert permuted[key] == pytest.approx(base[key], abs=1e-12)
        assert scaled[key] == pytest.approx(base[key], abs=1e-12)
    e_base = evaluate(x, y, metrics=RETRIEVAL, distance="euclidean")
    e_scaled = evaluate(x * 4, y, metrics=RETRIEVAL, distance="euclidean")
    assert e_base == e_scaled


def test_memory_budget_does_not_change_any_number():
    g = np.random.default_rng(5)
    x = g.normal(size=(200, 8)).astype(np.float32)
    y = g.integers(0, 30, 200)
    big = evaluate(x, y, metrics=RETRIEVAL, recall_ks=(1, 2, 50))
    small = evaluate(x, y, metrics=RETRIEVAL, recall_ks=(1, 2, 50), memory_budget=120_000)
    assert big == small


def _pml(query, query_labels, reference=None, reference_labels=None):
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        knn_func=CustomKNN(CosineSimilarity()),
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(query, query_labels, reference, reference_labels,
                             ref_includes_query=False)


@pytest.mark.parametrize("same_set", [True, False])
def test_agrees_with_pytorch_metric_learning(same_set):
    g = torch.Generator().manual_seed(11)
    labels = torch.arange(25).repeat_interleave(4)[torch.randperm(100, generator=g)]
    x = torch.randn(100, 16, generator=g)
    if same_set:
        want = _pml(x, labels)
        got = evaluate(x, labels, metrics=["recall@1", "r_precision", "map@r"])
    else:
        q = torch.randn(60, 16, generator=g)
        ql = torch.randint(0, 25, (60,), generator=g)
        want = _pml(q, ql, x, labels)
        got = evaluate(x, labels, queries=q, query_labels=ql,
                       metrics=["recall@1", "r_precision", "map@r"])
    assert got["recall@1"] == pytest.approx(want["precision_at_1"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(want["r_precision"], abs=1e-6)
    assert got["map@r"] == pytest.approx(want["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_large_k_recall_by_counting_matches_brute_force(distance):
    # K above the list depth: recall comes from counting items ranked before the best
    # relevant one. For euclidean, small integer embeddings give many exact ties (exact in
    # float32 too); cosine ties after normalisation depend on rounding, so it gets
    # continuous data.
    g = np.random.default_rng(8)
    if distance == "euclidean":
        x = g.integers(-2, 3, size=(400, 3)).astype(np.float32)
    else:
        x = g.normal(size=(400, 3)).astype(np.float32)
    y = g.integers(0, 40, 400)
    ks = (1, 140, 200, 300)
    got = evaluate(x, y, metrics=["recall"], recall_ks=ks, distance=distance,
                   memory_budget=400_000)
    want = brute_retrieval(x, y, recall_ks=ks, distance=distance)
    for k in ks:
        assert got[f"recall@{k}"] == pytest.approx(want[f"recall@{k}"], abs=1e-12), k


def test_counting_and_listing_give_the_same_recall(monkeypatch):
    module = importlib.import_module("fairdml.eval.evaluate")
    g = np.random.default_rng(9)
    x = g.normal(size=(300, 2)).astype(np.float32)
    y = g.integers(0, 30, 300)
    q = g.normal(size=(50, 2)).astype(np.float32)
    ql = g.integers(0, 35, 50)
    ks = (1, 5, 20, 60)
    for kwargs in ({}, {"queries": q, "query_labels": ql}):
        listed = evaluate(x, y, metrics=["recall"], recall_ks=ks, **kwargs)
        monkeypatch.setattr(module, "_LIST_DEPTH", 0)
        counted = evaluate(x, y, metrics=["recall"], recall_ks=ks, **kwargs)
        monkeypatch.undo()
        assert listed == counted


@pytest.mark.parametrize("kind", ["faiss-ivf", "faiss-hnsw"])
def test_faiss_search_is_close_to_exact(kind):
    pytest.importorskip("faiss")
    g = np.random.default_rng(12)
    y = np.repeat(np.arange(100), 5)
    x = (np.eye(32)[y % 32] + 0.3 * g.normal(size=(500, 32))).astype(np.float32)
    exact = evaluate(x, y, metrics=["recall", "map@r"], recall_ks=(1, 10))
    approx = evaluate(x, y, metrics=["recall", "map@r"], recall_ks=(1, 10), search=kind)
    for key in ("recall@1", "recall@10", "map@r"):
        assert approx[key] == pytest.approx(exact[key], abs=0.05), key


def test_unknown_search_is_refused():
    with pytest.raises(ValueError, match="search must be"):
        evaluate(np.eye(3, dtype=np.float32), [0, 0, 1], search="annoy")
