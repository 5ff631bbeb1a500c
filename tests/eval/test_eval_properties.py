"""Property tests (hypothesis): every metric equals the brute-force reference on small
integer embeddings with exact ties, in both modes, whatever the memory budget."""

from __future__ import annotations

import numpy as np
import pytest
from eval_bruteforce import retrieval as brute_retrieval
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairdml import evaluate

METRICS = ["recall", "r_precision", "map@r", "map"]


@st.composite
def problems(draw):
    n = draw(st.integers(2, 40))
    dim = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    x = g.integers(-2, 3, size=(n, dim)).astype(np.float32)
    y = g.integers(0, draw(st.integers(1, 8)), n)
    queries = None
    if draw(st.booleans()):
        m = draw(st.integers(1, 15))
        queries = (g.integers(-2, 3, size=(m, dim)).astype(np.float32), g.integers(0, 9, m))
    budget = draw(st.sampled_from([20_000, 1 << 30]))
    return x, y, queries, budget


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_matches_brute_force(problem):
    x, y, queries, budget = problem
    q, ql = queries if queries is not None else (None, None)
    ks = (1, 2, 5)
    got = evaluate(x, y, queries=q, query_labels=ql, metrics=METRICS, recall_ks=ks,
                   distance="euclidean", memory_budget=budget)
    want = brute_retrieval(x, y, q, ql, recall_ks=ks, distance="euclidean")
    assert got["num_queries"] == want["num_queries"]
    assert got["num_skipped_queries"] == want["num_skipped_queries"]
    for key, value in want.items():
        if np.isnan(value):
            assert np.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key
