"""Re-ranking (fairdml.eval.rerank): a dense oracle written from the paper, constructed cases
where re-ranking must fix a wrong first neighbour, both modes, bad parameters, bounded memory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_bruteforce import rankings as brute_rankings
from torch.utils._python_dispatch import TorchDispatchMode

from fairdml import evaluate
from fairdml.eval.neighbors import exact_knn
from fairdml.eval.rerank import check_rerank, k_reciprocal_rerank, query_expansion

RETRIEVAL = ["recall", "r_precision", "map@r", "map"]


def dense_k_reciprocal(union: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """The paper's d* over the whole all-set U, dense and in loops (float64)."""
    u = union.astype(np.float64)
    sq = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    d = sq / (2 * np.linalg.norm(u, axis=1).max()) ** 2
    n = len(u)
    rank = np.array([np.lexsort((np.arange(n), row)) for row in d])

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]}

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, round(k1 / 2))
            if len(rc & r) > 2 / 3 * len(rc):
                expanded |= rc
        idx = sorted(expanded)
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.array([[1 - np.minimum(a, b).sum() / np.maximum(a, b).sum() for b in v] for a in v])
    return (1 - lam) * jac + lam * d


def normalised(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32))
    return torch.nn.functional.normalize(t, dim=1)


def clustered(n_classes: int, per_class: int, dim: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.standard_normal((n_classes, dim))
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), labels[order]


@pytest.mark.parametrize("k1,k2,lam", [(5, 3, 0.3), (4, 1, 0.0), (7, 6, 0.5)])
def test_same_set_matches_the_dense_oracle(k1, k2, lam):
    x, _ = clustered(8, 6, 16, 0.8, seed=k1)
    g = normalised(x)
    final, found = k_reciprocal_rerank(g, k1=k1, k2=k2, lambda_value=lam, candidates=len(x) - 1)
    dense = dense_k_reciprocal(g.numpy(), k1, k2, lam)
    for i, order in enumerate(brute_rankings(g.numpy(), g.numpy(), True, "cosine")):
        # Equal d* (e.g. d_J = 1 with lambda = 0) keep the original order.
        want = order[np.argsort(dense[i, order], kind="stable")]
        np.testing.assert_array_equal(found[i].numpy(), want)
        np.testing.assert_allclose(final[i].numpy(), dense[i, want], atol=2e-6)
        assert i not in found[i].tolist()


def test_query_gallery_matches_the_dense_oracle_over_probes_and_gallery():
    x, _ = clustered(6, 7, 12, 0.7, seed=3)
    q, g = normalised(x[:10]), normalised(x[10:])
    final, found = k_reciprocal_rerank(g, queries=q, k1=6, k2=3, candidates=len(g))
    dense = dense_k_reciprocal(torch.cat([q, g]).numpy(), 6, 3, 0.3)[:10, 10:]
    for i, order in enumerate(brute_rankings(q.numpy(), g.numpy(), False, "cosine")):
        want = order[np.argsort(dense[i, order], kind="stable")]
        np.testing.assert_array_equal(found[i].numpy(), want)
        np.testing.assert_allclose(final[i].numpy(), dense[i, want], atol=2e-6)


def impostor_scene() -> tuple[np.ndarray, np.ndarray]:
    """Query 0 (class a) has an impostor of class b as its nearest item; the impostor's
    own nearest items are its tight class b, so the query is not its k-reciprocal
    neighbour, while the four other a items are mutual neighbours of the query."""
    a = [(0.0, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5), (-0.35, 0.35)]
    impostor = [(0.3, 0.0)]
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    b = [(0.5 + 0.08 * np.cos(t), 0.08 * np.sin(t)) for t in angles]
    x = np.array(a + impostor + b, dtype=np.float32)
    labels = np.array([0] * 5 + [1] * 7)
    return x, labels


def test_k_reciprocal_fixes_a_wrong_first_neighbour():
    x, labels = impostor_scene()
    g = torch.from_numpy(x)
    _, plain = exact_knn(g, 1, distance="euclidean")
    assert labels[int(plain[0, 0])] != labels[0]  # plain ranking: the impostor comes first
    _, found = k_reciprocal_rerank(g, k1=5, k2=1, distance="euclidean")
    assert labels[int(found[0, 0])] == labels[0]
    assert int(found[0, 0]) != 0
    assert found[0].tolist().index(5) >= 3  # the impostor falls behind three a items
    options = {"metrics": ["recall@1"], "distance": "euclidean"}
    before = evaluate(x, labels, **options)
    after = evaluate(x, labels, rerank="k_reciprocal",
                     rerank_params={"k1": 5, "k2": 1}, **options)
    assert after["recall@1"] > before["recall@1"]


def test_query_expansion_fixes_a_wrong_first_neighbour_both_modes():
    # On the unit circle: the query at angle 0, an impostor at +0.3 rad, its own class
    # at -0.31 .. -0.33 rad; the mean of the query and its 3 nearest points to -0.165.
    angles = np.array([0.0, 0.3, -0.31, -0.32, -0.33, 1.5, 1.52])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 1, 0, 0, 0, 1, 1])
    g = normalised(x)
    _, plain = exact_knn(g, 1)
    assert int(plain[0, 0]) == 1
    expanded = query_expansion(g, num_neighbors=3)
    torch.testing.assert_close(expanded.norm(dim=1), torch.ones(7))
    options = {"metrics": ["recall@1"]}
    before = evaluate(x, labels, **options)
    after = evaluate(x, labels, rerank="query_expansion",
                     rerank_params={"num_neighbors": 3}, **options)
    assert after["recall@1"] > before["recall@1"]
    # Query/gallery mode: the same query against the other points.
    args = (x[1:], labels[1:])
    kwargs = {"queries": x[:1], "query_labels": labels[:1], **options}
    assert evaluate(*args, **kwargs)["recall@1"] == 0.0
    fixed = evaluate(*args, rerank="query_expansion", rerank_params={"num_neighbors": 3},
                     **kwargs)
    assert fixed["recall@1"] == 1.0


def test_alpha_query_expansion_weights_by_powers_of_cosine():
    g = normalised(np.array([[1, 0], [1, 1], [0, 1], [-1, 0.1]], dtype=np.float32))
    expanded = query_expansion(g, queries=g[:1], num_neighbors=2, alpha=3.0)
    c = float(g[0] @ g[1])  # neighbours of [1, 0]: itself (in the gallery), then [1, 1]
    want = g[0] + 1.0 * g[0] + c**3 * g[1]
    torch.testing.assert_close(expanded[0], want / want.norm())


def brute_metrics(full_rankings, labels, query_labels, ks):
    """recall@K, r_precision, map@r and map of whole rankings, from the definitions."""
    sums = {f"recall@{k}": 0.0 for k in ks}
    sums.update({"r_precision": 0.0, "map@r": 0.0, "map": 0.0})
    used = 0
    for i, full in enumerate(full_rankings):
        rel = [labels[j] == query_labels[i] for j in full]
        r = sum(rel)
        if r == 0:
            continue
        used += 1
        for k in ks:
            sums[f"recall@{k}"] += any(rel[:k])
        sums["r_precision"] += sum(rel[:r]) / r
        hits, ap, ap_r = 0, 0.0, 0.0
        for pos, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                ap += hits / pos
                ap_r += hits / pos if pos <= r else 0.0
        sums["map"] += ap / r
        sums["map@r"] += ap_r / r
    return {k: v / used for k, v in sums.items()}


def brute_reranked(x, labels, queries, query_labels, head_order, ks=(1, 2, 50)):
    """Metrics of full rankings whose head is ``head_order`` and whose tail is original."""
    same_set = queries is None
    q = x if same_set else queries
    ql = labels if same_set else query_labels
    full_rankings = []
    for i, order in enumerate(brute_rankings(q, x, same_set, "cosine")):
        head = list(head_order[i])
        assert sorted(head) == sorted(order[: len(head)].tolist())
        full_rankings.append(head + order[len(head):].tolist())
    return brute_metrics(full_rankings, labels, ql, ks)


def test_deep_recall_and_map_after_reranking_same_set():
    # 300 items: recall@200 lies beyond the listed depth and is counted.
    x, labels = clustered(50, 6, 12, 1.3, seed=8)
    ks = (1, 4, 200)
    got = evaluate(x, labels, metrics=RETRIEVAL, recall_ks=ks, rerank="k_reciprocal",
                   rerank_params={"k1": 8, "k2": 3})
    _, head = k_reciprocal_rerank(normalised(x), k1=8, k2=3, candidates=16)
    want = brute_reranked(x, labels, None, None, head.numpy(), ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    got = evaluate(x, labels, metrics=RETRIEVAL, recall_ks=ks, rerank="query_expansion",
                   rerank_params={"num_neighbors": 3, "alpha": 1.5})
    expanded = query_expansion(normalised(x), num_neighbors=3, alpha=1.5).numpy()
    want = brute_metrics(brute_rankings(expanded, x, True, "cosine"), labels, labels, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("mode", ["same_set", "query_gallery"])
def test_evaluate_metrics_of_the_reranked_ranking(mode):
    x, labels = clustered(12, 8, 16, 1.2, seed=11)
    params = {"k1": 6, "k2": 3, "candidates": 10}
    if mode == "same_set":
        data = {"embeddings": x, "labels": labels}
        q, ql, gallery = None, None, normalised(x)
        _, head = k_reciprocal_rerank(gallery, k1=6, k2=3, candidates=10)
    else:
        data = {"embeddings": x[20:], "labels": labels[20:], "queries": x[:20],
                "query_labels": labels[:20]}
        q, ql, gallery = x[:20], labels[:20], normalised(x[20:])
        _, head = k_reciprocal_rerank(gallery, queries=normalised(x[:20]), k1=6, k2=3,
                                      candidates=10)
    got = evaluate(**data, metrics=RETRIEVAL, recall_ks=(1, 2, 50), rerank="k_reciprocal",
                   rerank_params=params)
    want = brute_reranked(data["embeddings"], data["labels"], q, ql, head.numpy())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    plain = evaluate(**data, metrics=RETRIEVAL, recall_ks=(1, 2, 50))
    assert got["map@r"] != plain["map@r"]  # re-ranking changed something here


def test_evaluate_with_query_expansion_is_plain_evaluation_of_the_expanded_queries():
    x, labels = clustered(10, 6, 8, 1.0, seed=5)
    g = normalised(x)
    expanded = query_expansion(g[15:], queries=g[:15], num_neighbors=2).numpy()
    got = evaluate(x[15:], labels[15:], queries=x[:15], query_labels=labels[:15],
                   metrics=RETRIEVAL, rerank="query_expansion")
    want = evaluate(x[15:], labels[15:], queries=expanded, query_labels=labels[:15],
                    metrics=RETRIEVAL)
    assert got == pytest.approx(want)


def test_same_set_never_returns_self_even_for_exact_duplicates():
    x, labels = clustered(5, 4, 6, 0.5, seed=2)
    x = np.concatenate([x, x])  # every item has an identical twin
    g = normalised(x)
    _, found = k_reciprocal_rerank(g, k1=4, k2=2)
    rows = torch.arange(len(x))[:, None]
    assert not bool((found == rows).any())
    expanded = query_expansion(g, num_neighbors=2)
    from fairdml.eval.rerank import search_excluding_self

    listed = search_excluding_self(g, expanded, 5, distance="cosine", memory_budget=1 << 20)
    assert not bool((listed == rows).any())
    assert bool((listed[:, 0] == (rows[:, 0] + 20) % 40).all())  # the twin comes first


def test_lambda_one_keeps_the_original_order():
    x, _ = clustered(6, 5, 10, 0.9, seed=4)
    g = normalised(x)
    _, plain = exact_knn(g, 12)
    _, found = k_reciprocal_rerank(g, k1=5, lambda_value=1.0, candidates=12)
    torch.testing.assert_close(found, plain)


@pytest.mark.parametrize(
    "method,params,message",
    [
        ("k_reciprocal_x", None, "unknown rerank method 'k_reciprocal_x'"),
        ("k_reciprocal", {"k3": 1}, r"unknown key\(s\) \['k3'\]"),
        ("k_reciprocal", {"k1": 0}, "k1 must be an integer >= 1, got 0"),
        ("k_reciprocal", {"k2": 2.5}, "k2 must be an integer >= 1, got 2.5"),
        ("k_reciprocal", {"k1": True}, "k1 must be an integer >= 1, got True"),
        ("k_reciprocal", {"lambda": 1.5}, r"lambda must be a number in \[0, 1\], got 1.5"),
        ("k_reciprocal", {"candidates": -3}, "candidates must be an integer >= 1"),
        ("query_expansion", {"num_neighbors": 0}, "num_neighbors must be an integer >= 1"),
        ("query_expansion", {"alpha": -1}, "alpha must be a finite number >= 0, got -1"),
        ("query_expansion", {"k1": 3}, r"expected \['alpha', 'num_neighbors'\]"),
        (None, {"k1": 3}, "given without rerank"),
        ("k_reciprocal", [("k1", 3)], "rerank_params must be a dict"),
    ],
)
def test_bad_parameters_are_refused_with_clear_errors(method, params, message):
    with pytest.raises(ValueError, match=message):
        check_rerank(method, params)
    x, labels = clustered(3, 4, 4, 0.5, seed=0)
    with pytest.raises(ValueError, match=message):
        evaluate(x, labels, metrics=["recall"], rerank=method, rerank_params=params)


def test_other_refusals():
    x, labels = clustered(3, 4, 4, 0.5, seed=0)
    with pytest.raises(ValueError, match="needs search='exact'"):
        evaluate(x, labels, rerank="k_reciprocal", search="faiss-ivf")
    with pytest.raises(ValueError, match="needs distance='cosine'"):
        query_expansion(torch.from_numpy(x), num_neighbors=2, alpha=2.0, distance="euclidean")
    with pytest.raises(ValueError, match="only 11 are available"):
        query_expansion(normalised(x), num_neighbors=12)
    with pytest.raises(ValueError, match="at least one gallery candidate"):
        k_reciprocal_rerank(normalised(x[:1]))


def test_check_rerank_fills_defaults():
    assert check_rerank("k_reciprocal", None) == {"k1": 20, "k2": 6, "lambda": 0.3,
                                                  "candidates": None}
    assert check_rerank("query_expansion", {"alpha": 3}) == {"num_neighbors": 2, "alpha": 3}
    assert check_rerank(None, None) == {}


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any dense tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                if t.numel() > self.largest:
                    self.largest, self.op = t.numel(), func
        return out


def test_memory_stays_far_below_a_dense_matrix():
    # 3,000 items: a dense N x N float32 matrix is 36 MB; with a 4 MiB budget no tensor
    # (search blocks included) may hold even an eighth of N x N elements.
    n = 3000
    x, labels = clustered(600, 5, 32, 0.6, seed=1)
    g = normalised(x)
    with LargestTensor() as watch:
        k_reciprocal_rerank(g, k1=20, k2=6, memory_budget=4 << 20)
        query_expansion(g, num_neighbors=3, memory_budget=4 << 20)
    assert 0 < watch.largest < n * n // 8, (watch.largest, watch.op)


def test_fairdml_eval_command_rerank_flags(tmp_path):
    from fairdml.cli import main

    x, labels = clustered(6, 5, 8, 0.8, seed=9)
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=x, labels=labels)
    out = tmp_path / "m.json"
    code = main(["eval", "--embeddings", str(path), "--metrics", "map@r", "--no-progress",
                 "--rerank", "k_reciprocal", "--rerank-k1", "4", "--rerank-k2", "2",
                 "--rerank-lambda", "0.5", "--out", str(out)])
    assert code == 0
    want = evaluate(x, labels, metrics=["map@r"], rerank="k_reciprocal",
                    rerank_params={"k1": 4, "k2": 2, "lambda": 0.5})
    assert json.loads(out.read_text())["map@r"] == pytest.approx(want["map@r"])
    with pytest.raises(SystemExit, match="--rerank-alpha need --rerank"):
        main(["eval", "--embeddings", str(path), "--rerank-alpha", "2"])
