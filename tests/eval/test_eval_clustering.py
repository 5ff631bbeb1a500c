"""k-means, NMI and pair F1."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from eval_bruteforce import nmi as brute_nmi
from eval_bruteforce import pair_f1 as brute_f1

from fairdml import evaluate
from fairdml.eval.clustering import clustering_metrics, init_centers, kmeans, pair_f1


def _blobs(n_per=8, k=5, dim=6, spread=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:k] * 3
    y = torch.arange(k).repeat_interleave(n_per)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_pair_f1_matches_pair_enumeration():
    g = np.random.default_rng(0)
    for _ in range(5):
        classes, clusters = g.integers(0, 4, 30), g.integers(0, 6, 30)
        assert pair_f1(classes, clusters) == pytest.approx(brute_f1(classes, clusters))


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    x, y = _blobs()
    labels = kmeans(x, 5, seed=3)
    assert brute_nmi(y.numpy(), labels.numpy()) == pytest.approx(1.0)
    assert torch.equal(labels, kmeans(x, 5, seed=3))


def test_kmeans_handles_duplicates_and_refuses_bad_k():
    x = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 2)
    centres = init_centers(x, 4, torch.Generator().manual_seed(0), 1 << 20)
    assert centres.shape == (4, 2)
    assert kmeans(x, 4, seed=0).unique().numel() <= 4
    with pytest.raises(ValueError, match="1 <= k"):
        kmeans(x, 9)


def test_clustering_metrics_mean_and_std_over_seeds():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(60, 4, generator=g), dim=1)
    y = torch.randint(0, 6, (60,), generator=g)
    out = clustering_metrics(x, y, 6, seeds=(0, 1, 2))
    singles = [clustering_metrics(x, y, 6, seeds=(s,))["nmi"] for s in (0, 1, 2)]
    assert out["nmi"] == pytest.approx(np.mean(singles))
    assert out["nmi_std"] == pytest.approx(np.std(singles))
    assert 0.0 <= out["f1"] <= 1.0


def test_fewer_than_two_classes_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        evaluate(np.ones((4, 3), dtype=np.float32), [1, 1, 1, 1], metrics=["nmi"])


def test_only_the_asked_metrics_are_computed(monkeypatch):
    module = importlib.import_module("fairdml.eval.evaluate")

    def refuse(*args, **kwargs):
        raise AssertionError("k-means must not run without a clustering metric")

    monkeypatch.setattr(module, "clustering_metrics", refuse)
    x, y = _blobs()
    out = evaluate(x, y, metrics=["map@r"])
    assert set(out) == {"map@r", "num_queries", "num_skipped_queries"}
