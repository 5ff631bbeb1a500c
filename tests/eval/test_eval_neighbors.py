"""Exact top-k search: brute-force equality, tie-breaking, symmetric == plain, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairdml.eval.neighbors import exact_knn, lexsort_rows, select_topk


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _reference(queries, gallery, k, same_set, distance):
    if distance == "cosine":
        s = (queries @ gallery.T).double().numpy()
    else:
        s = -((queries.double()[:, None] - gallery.double()[None]) ** 2).sum(-1).numpy()
    out = []
    for i, row in enumerate(s):
        order = np.lexsort((np.arange(len(row)), -row))
        if same_set:
            order = order[order != i]
        out.append(order[:k])
    return np.stack(out)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("block", [7, 32, 500])
def test_same_set_matches_brute_force(distance, block):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 8, generator=g)
    if distance == "cosine":
        x = _unit(x)
    _, idx = exact_knn(x, 20, distance=distance, block_size=block)
    assert np.array_equal(idx.numpy(), _reference(x, x, 20, True, distance))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_query_gallery_matches_brute_force(distance):
    g = torch.Generator().manual_seed(2)
    q, x = torch.randn(70, 6, generator=g), torch.randn(130, 6, generator=g)
    if distance == "cosine":
        q, x = _unit(q), _unit(x)
    scores, idx = exact_knn(x, 25, queries=q, distance=distance, block_size=16)
    assert np.array_equal(idx.numpy(), _reference(q, x, 25, False, distance))
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_ties_go_to_the_lower_index_and_self_is_never_returned():
    x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 3)
    for symmetric in (True, False):
        _, idx = exact_knn(x, 6, symmetric=symmetric, block_size=3)
        assert idx[0].tolist() == [1, 2, 3, 4, 5, 6]
        assert idx[2].tolist() == [0, 1, 3, 4, 5, 6]
        assert idx[5].tolist() == [4, 6, 0, 1, 2, 3]


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_symmetric_path_equals_plain_path_exactly(distance):
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-2, 3, (60, 5), generator=g).float()
    x = torch.cat([base, base[:20], torch.randn(40, 5, generator=g)])  # exact ties too
    x = x[(x != 0).any(dim=1)]
    if distance == "cosine":
        x = _unit(x)
    for block in (9, 64):
        s_sym, i_sym = exact_knn(x, 30, distance=distance, symmetric=True, block_size=block)
        s_pln, i_pln = exact_knn(x, 30, distance=distance, symmetric=False, block_size=block)
        assert torch.equal(i_sym, i_pln)
        assert torch.equal(s_sym, s_pln)


def test_small_memory_budget_gives_same_neighbours():
    g = torch.Generator().manual_seed(4)
    x = _unit(torch.randn(300, 16, generator=g))
    _, big = exact_knn(x, 40)
    _, small = exact_knn(x, 40, memory_budget=200_000)
    assert torch.equal(big, small)


def test_k_out_of_range_is_refused():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="between 1 and 4"):
        exact_knn(x, 5)
    with pytest.raises(ValueError, match="between 1 and 5"):
        exact_knn(x, 6, queries=x)


def test_select_topk_is_exact_under_heavy_ties():
    g = torch.Generator().manual_seed(5)
    values = torch.randint(0, 3, (50, 40), generator=g).float()
    indices = torch.stack([torch.randperm(40, generator=g) for _ in range(50)])
    got_v, got_i = select_topk(values, indices, 7)
    want_v, want_i = lexsort_rows(values, indices, 7)
    assert torch.equal(torch.sort(got_i, dim=1).values, torch.sort(want_i, dim=1).values)
    assert torch.equal(torch.sort(got_v, dim=1).values, torch.sort(want_v, dim=1).values)


def test_rows_with_more_candidates_than_the_buffer_stay_exact(monkeypatch):
    import fairdml.eval.neighbors as neighbors

    monkeypatch.setattr(neighbors, "_MIN_BUFFER", 1)
    monkeypatch.setattr(neighbors, "_SPARSE_MAX_FRACTION", 1.0)
    g = torch.Generator().manual_seed(6)
    x = torch.randint(-1, 2, (120, 3), generator=g).float()
    for symmetric in (True, False):
        _, idx = exact_knn(x, 5, distance="euclidean", symmetric=symmetric, block_size=40)
        assert np.array_equal(idx.numpy(), _reference(x, x, 5, True, "euclidean"))


def test_rank_counter_agrees_between_paths_and_with_brute_force():
    from fairdml.eval.neighbors import iter_neighbors

    g = torch.Generator().manual_seed(8)
    x = torch.randint(-2, 3, (90, 2), generator=g).float()
    target_index = (torch.arange(90) + torch.randint(1, 90, (90,), generator=g)) % 90
    s = -((x[:, None] - x[None]) ** 2).sum(-1)
    target = s[torch.arange(90), target_index]
    want = []
    for q in range(90):
        before = (s[q] > target[q]) | ((s[q] == target[q]) & (torch.arange(90) < target_index[q]))
        before[q] = False
        want.append(int(before.sum()))
    for symmetric in (True, False):
        blocks = iter_neighbors(x, 3, distance="euclidean", symmetric=symmetric, block_size=16,
                                rank_of=(target, target_index))
        above = torch.cat([b.above for b in blocks])
        assert above.tolist() == want


def test_tile_candidates_equal_a_plain_comparison():
    from fairdml.eval.neighbors import column_candidates, row_candidates

    g = torch.Generator().manual_seed(3)
    scores = torch.randn(70, 45, generator=g).round(decimals=1)  # ties at the thresholds
    row_threshold = scores.kthvalue(40, dim=1).values
    column_threshold = scores.kthvalue(65, dim=0).values
    rows, columns = row_candidates(scores, row_threshold, 8, 1.0)
    want = torch.nonzero(scores >= row_threshold[:, None])
    assert torch.equal(torch.stack([rows, columns], 1), want)
    columns, rows = column_candidates(scores, column_threshold, 8, 1.0)
    got = sorted(zip(columns.tolist(), rows.tolist()))
    want = torch.nonzero(scores.T >= column_threshold[:, None]).tolist()
    assert got == [tuple(w) for w in want]
    assert columns.tolist() == sorted(columns.tolist())  # grouped by column
    assert row_candidates(scores, row_threshold, 8, 0.01) is None


def test_search_restores_the_thread_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
        exact_knn(x, 5, block_size=64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
