"""Re-ranking of retrieval results: k-reciprocal re-ranking and (alpha-weighted) average
query expansion, on top-k neighbour lists (memory O(N * k), never a dense N x N matrix).

**k-reciprocal re-ranking** (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017). All items of the "all set" U (the gallery in
same-set mode; probes and gallery together in query/gallery mode, as in the paper) are
ranked against U, each item first in its own list (distance 0). With N(p, k) the first
k + 1 entries of p's list:

- R(p, k) = {g in N(p, k) : p in N(g, k)} (k-reciprocal neighbours, p itself included);
- R*(p, k1) = R(p, k1) united with every R(q, round(k1 / 2)), q in R(p, k1), that shares
  more than 2/3 of its items with R(p, k1) (the paper's "expansion");
- V_p[g] = exp(-d(p, g)) for g in R*(p, k1), 0 elsewhere, divided by its sum;
- local query expansion: V_p <- mean of V_g over the first k2 entries of p's list;
- d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j]);
- d*(p, g) = (1 - lambda) d_J(p, g) + lambda d(p, g).

``d`` is the squared Euclidean distance divided by its largest possible value over the
data, (2 max_i |x_i|)^2, so d lies in [0, 1]; for L2-normalised (cosine) embeddings that is
(1 - cos) / 2. The authors' released code instead divides each row by its own largest
distance, which needs a full extra pass over all pairs; the fixed bound keeps the
weights in the same [e^-1, 1] range without it. Only a query's first ``candidates``
neighbours (exact search) are re-ranked by d* (equal d* keep their original order); the
items after them keep their original order.

Memory, with N = |U|: the exact top-k search of :mod:`.neighbors` (its own budget), the
lists N x (max(k1, k2 - 1, candidates) + 1), the reciprocal sets N x (k1 + 1), V as
compressed rows (at most |R*| <= (k1 + 1)(round(k1 / 2) + 2) nonzeros a row, k2 times that
after local expansion), and a (chunk x N) buffer for the Jaccard sums: O(N k), no N x N
array (tested by watching every tensor an operation returns).

**Average query expansion** (Chum, Philbin, Sivic, Isard, Zisserman, "Total Recall",
ICCV 2007; alpha weights as in Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval
with No Human Annotation", TPAMI 2018): q' = (q + sum_{i<=n} w_i g_i) / (1 + sum_i w_i)
over the query's n nearest gallery items g_i, with w_i = 1 (AQE, alpha = 0) or
w_i = max(cos(q, g_i), 0)^alpha (alpha-QE); q' is L2-normalised for cosine, then the
gallery is searched again, exactly. In same-set mode a query never retrieves itself.

:func:`reranked_retrieval` computes the retrieval metrics of :func:`fairdml.evaluate`
on the re-ranked lists (see its docstring for ``map`` and deep recall@K).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fairdml.eval.metrics import (
    best_relevant,
    exact_mean,
    full_average_precision,
    retrieval_from_neighbors,
)
from fairdml.eval.neighbors import (
    DEFAULT_MEMORY_BUDGET,
    NeighborBlock,
    count_ranked_before,
    exact_knn,
)

METHODS = ("k_reciprocal", "query_expansion")
DEFAULTS: dict[str, dict[str, Any]] = {
    "k_reciprocal": {"k1": 20, "k2": 6, "lambda": 0.3, "candidates": None},
    "query_expansion": {"num_neighbors": 2, "alpha": 0.0},
}
_LIST_DEPTH = 128  # recall@K with K above this (and above the list) is counted, not listed


def check_rerank(method: str | None, params: dict[str, Any] | None) -> dict[str, Any]:
    """The full parameters of ``method`` (defaults filled in), validated.

    ``k_reciprocal``: ``k1`` (int >= 1), ``k2`` (int >= 1), ``lambda`` (in [0, 1]),
    ``candidates`` (int >= 1 or None: 2 k1, and in :func:`reranked_retrieval` max(2 k1,
    max R) when r_precision or map@r is asked for).
    ``query_expansion``: ``num_neighbors`` (int >= 1), ``alpha`` (float >= 0).
    """
    if method is None:
        if params:
            raise ValueError(f"rerank_params {params!r} given without rerank; set rerank to "
                             f"one of {list(METHODS)}")
        return {}
    if method not in METHODS:
        raise ValueError(f"unknown rerank method {method!r}; expected one of {list(METHODS)}")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"rerank_params must be a dict of parameters of {method!r}, got "
                         f"{type(params).__name__} {params!r}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS[method]))
    if unknown:
        raise ValueError(f"rerank_params for {method!r}: unknown key(s) {unknown}; expected "
                         f"{sorted(DEFAULTS[method])}")
    full = {**DEFAULTS[method], **params}
    ints = ("k1", "k2") if method == "k_reciprocal" else ("num_neighbors",)
    for key in ints:
        _check_positive_int(method, key, full[key])
    if method == "k_reciprocal":
        if full["candidates"] is not None:
            _check_positive_int(method, "candidates", full["candidates"])
        value = full["lambda"]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise ValueError(f"rerank_params for 'k_reciprocal': lambda must be a number in "
                             f"[0, 1], got {value!r}")
    else:
        value = full["alpha"]
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value) or value < 0):
            raise ValueError(f"rerank_params for 'query_expansion': alpha must be a finite "
                             f"number >= 0, got {value!r}")
    return full


def _check_positive_int(method: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"rerank_params for {method!r}: {key} must be an integer >= 1, "
                         f"got {value!r}")


# ---------------------------------------------------------------- k-reciprocal re-ranking


@dataclass(frozen=True)
class SparseRows:
    """A row-sparse matrix (CSR): row i holds ``values[start[i]:start[i+1]]`` at the
    columns ``columns[...]``, sorted ascending within each row."""

    start: torch.Tensor
    columns: torch.Tensor
    values: torch.Tensor


def _squared_distance(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                      budget: int) -> torch.Tensor:
    """|x[rows] - x[cols]|^2 = |a|^2 + |b|^2 - 2 a.b (clamped at 0) for matching 1-D index
    arrays, in chunks that fit ``budget``."""
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    norms = (x * x).sum(dim=1)
    step = max(1, budget // (64 * x.shape[1] * x.element_size()))
    for s in range(0, rows.numel(), step):
        r, c = rows[s:s + step], cols[s:s + step]
        dots = (x.index_select(0, r) * x.index_select(0, c)).sum(dim=1)
        out[s:s + step] = (norms[r] + norms[c] - 2 * dots).clamp_min(0)
    return out


def _distance_from_scores(x: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor,
                          found: torch.Tensor, distance: str) -> torch.Tensor:
    """Squared distances of the searched pairs from their search scores (no new products):
    cosine scores are dot products, euclidean scores are minus squared distances."""
    if distance == "euclidean":
        return -scores
    norms = (x * x).sum(dim=1)
    return (norms[rows][:, None] + norms[found] - 2 * scores).clamp_min(0)


def _reciprocal_mask(lists: torch.Tensor, k: int, step: int) -> torch.Tensor:
    """(n, k + 1) booleans: entry j of row p's first k + 1 is a k-reciprocal neighbour."""
    n = lists.shape[0]
    forward = lists[:, : k + 1]
    mask = torch.empty(forward.shape, dtype=torch.bool, device=lists.device)
    for s in range(0, n, step):
        e = min(n, s + step)
        backward = lists[forward[s:e], : k + 1]  # (b, k + 1, k + 1)
        own = torch.arange(s, e, device=lists.device)[:, None, None]
        mask[s:e] = (backward == own).any(dim=2)
    return mask


def _expanded_sets(lists: torch.Tensor, k1: int, step: int) -> tuple[torch.Tensor, ...]:
    """R*(p, k1) of every p as (row, column) pairs sorted by row then column."""
    n = lists.shape[0]
    half = min(round(k1 / 2), lists.shape[1] - 1)
    full_mask = _reciprocal_mask(lists, k1, step)
    half_mask = _reciprocal_mask(lists, half, step)
    members = torch.where(full_mask, lists[:, : k1 + 1], -1)  # R(p, k1), -1 = absent
    half_members = torch.where(half_mask, lists[:, : half + 1], -2)  # R(q, k1/2), -2 = absent
    rows_out, cols_out = [], []
    for s in range(0, n, step):
        e = min(n, s + step)
        own = members[s:e]  # (b, a)
        their = half_members[own.clamp_min(0)]  # (b, a, h) of each candidate q
        shared = (their[..., None] == own[:, None, None, :]).any(dim=3).sum(dim=2)
        size = half_mask[own.clamp_min(0)].sum(dim=2)
        accept = (own >= 0) & (3 * shared > 2 * size)
        extra = torch.where(accept[..., None], their, -2).flatten(1)
        union = torch.cat([own, extra], dim=1)
        union = torch.where(union < 0, n, union)
        union = torch.sort(union, dim=1).values
        keep = union < n
        keep[:, 1:] &= union[:, 1:] != union[:, :-1]
        r, c = torch.nonzero(keep).unbind(1)
        rows_out.append(r + s)
        cols_out.append(union[r, c])
    return torch.cat(rows_out), torch.cat(cols_out)


def _rows_to_sparse(n: int, rows: torch.Tensor, cols: torch.Tensor,
                    values: torch.Tensor) -> SparseRows:
    """CSR from (row, column, value) triplets already sorted by row then column."""
    counts = torch.bincount(rows, minlength=n)
    start = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    start[1:] = torch.cumsum(counts, 0)
    return SparseRows(start, cols, values)


def _encoding(x: torch.Tensor, lists: torch.Tensor, list_distances: torch.Tensor, k1: int,
              scale: float, budget: int) -> SparseRows:
    """V: the Gaussian-kernel encoding of each item's expanded k-reciprocal set, rows
    summing to 1. ``list_distances`` are the squared distances along ``lists``; pairs
    outside the lists are computed."""
    n = x.shape[0]
    step = max(1, budget // (256 * (k1 + 1) ** 2))
    rows, cols = _expanded_sets(lists, k1, step)
    squared = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    known = torch.zeros(rows.shape, dtype=torch.bool, device=x.device)
    chunk = max(1, budget // (128 * lists.shape[1]))  # int64 rows of lists, masks, gathers
    for s in range(0, rows.numel(), chunk):
        part = slice(s, s + chunk)
        hit = lists[rows[part]] == cols[part, None]
        known[part] = hit.any(dim=1)
        squared[part] = list_distances[rows[part]].gather(1, hit.to(torch.int8).argmax(dim=1,
                                                          keepdim=True))[:, 0]
    unknown = torch.nonzero(~known).flatten()
    squared[unknown] = _squared_distance(x, rows[unknown], cols[unknown], budget)
    weights = torch.exp(-squared / scale)
    sums = torch.zeros(n, dtype=weights.dtype, device=x.device).index_add_(0, rows, weights)
    return _rows_to_sparse(n, rows, cols, weights / sums[rows])


def _gather_rows(v: SparseRows, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The nonzeros of rows ``items`` (with repeats): (which entry of ``items``, position
    in ``v.columns`` / ``v.values``), grouped by entry of ``items`` in order."""
    counts = v.start[items + 1] - v.start[items]
    owner = torch.repeat_interleave(torch.arange(items.numel(), device=items.device), counts)
    first = torch.cumsum(counts, 0) - counts
    at = v.start[items][owner] + torch.arange(owner.numel(), device=owner.device) - first[owner]
    return owner, at


def _local_expansion(v: SparseRows, lists: torch.Tensor, k2: int) -> SparseRows:
    """V_p <- mean of V_g over the first k2 entries of p's list (p itself first): the
    nonzeros of those rows, summed per (p, column) after one sort of the keys."""
    n = lists.shape[0]
    k2 = min(k2, lists.shape[1])
    if k2 == 1:
        return v
    owner, at = _gather_rows(v, lists[:, :k2].reshape(-1))
    keys = torch.div(owner, k2, rounding_mode="floor") * (n + 1) + v.columns[at]
    keys, order = torch.sort(keys)
    unique, slot = torch.unique_consecutive(keys, return_inverse=True)
    values = torch.zeros(unique.numel(), dtype=v.values.dtype, device=keys.device)
    values.index_add_(0, slot, v.values[at][order])
    rows = torch.div(unique, n + 1, rounding_mode="floor")
    return _rows_to_sparse(n, rows, unique - rows * (n + 1), values / k2)


def _padded(v: SparseRows, fill_column: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of ``v`` as (n, max row length) columns and values, padded with
    ``fill_column`` and 0."""
    lengths = v.start[1:] - v.start[:-1]
    width = max(int(lengths.max()), 1)
    offsets = torch.arange(width, device=lengths.device)
    real = offsets[None, :] < lengths[:, None]
    at = (v.start[:-1, None] + offsets[None, :]).clamp_max(max(v.columns.numel() - 1, 0))
    columns = torch.where(real, v.columns[at], fill_column)
    values = torch.where(real, v.values[at], torch.zeros((), dtype=v.values.dtype))
    return columns, values


def _jaccard(v: SparseRows, query_rows: torch.Tensor, candidate_rows: torch.Tensor,
             budget: int) -> torch.Tensor:
    """d_J between each query row and each of its candidates (same shape as candidates).

    For a chunk of queries, V_p is scattered into a (chunk, n) buffer, so that
    sum_j min(V_p[j], V_g[j]) over the nonzeros of V_g is one gather; the buffer is
    cleared entry by entry afterwards. sum max = sum V_p + sum V_g - sum min.
    """
    n_q, depth = candidate_rows.shape
    n = v.start.numel() - 1
    columns, values = _padded(v, n)  # column n is a padding column, always 0 in the buffer
    width = columns.shape[1]
    sums = values.sum(dim=1)
    step = max(1, min(1024, budget // (4 * (n + 1) + 24 * depth * width)))
    buffer = torch.zeros((min(step, n_q), n + 1), dtype=values.dtype, device=values.device)
    out = torch.empty(candidate_rows.shape, dtype=values.dtype, device=values.device)
    for s in range(0, n_q, step):
        e = min(n_q, s + step)
        local = torch.arange(e - s, device=values.device)[:, None]
        q_cols = columns[query_rows[s:e]]
        buffer[local, q_cols] = values[query_rows[s:e]]
        items = candidate_rows[s:e]
        looked = buffer[: e - s].gather(1, columns[items].view(e - s, depth * width))
        shared = torch.minimum(looked.view(e - s, depth, width), values[items]).sum(dim=2)
        buffer[local, q_cols] = 0
        total = sums[query_rows[s:e]][:, None] + sums[items]
        out[s:e] = 1 - shared / (total - shared)
    return out


def k_reciprocal_rerank(
    gallery: torch.Tensor,
    *,
    queries: torch.Tensor | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    candidates: int | None = None,
    distance: str = "cosine",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-reciprocal re-ranking (module docstring): ``(d*, indices)`` of shape
    ``(n_queries, candidates)``, each row the query's ``candidates`` nearest gallery items
    (exact search) ordered by d* ascending, equal d* in their original order.

    Inputs are used as given (L2-normalise them first for cosine). Without ``queries``
    every gallery item is a query and never its own candidate. ``candidates`` defaults to
    2 k1. Memory: O(|U| (k1 + k2 + candidates) + nnz(V)), no |U| x |U| array.
    """
    final, reranked, _ = _k_reciprocal(gallery, queries, k1, k2, lambda_value, candidates,
                                       distance, memory_budget)
    return final, reranked


def _k_reciprocal(gallery, queries, k1, k2, lambda_value, candidates, distance, budget,
                  list_depth=None):
    """(sorted d*, re-ranked indices, original indices) of :func:`k_reciprocal_rerank`;
    with ``list_depth`` > candidates the lists go on to that depth in the original order
    (d* of those entries is not computed: +inf)."""
    check_rerank("k_reciprocal", {"k1": k1, "k2": k2, "lambda": lambda_value,
                                  "candidates": candidates})
    same_set = queries is None
    n_gallery = gallery.shape[0]
    available = n_gallery - 1 if same_set else n_gallery
    if available < 1:
        raise ValueError("k-reciprocal re-ranking needs at least one gallery candidate per "
                         f"query; got a gallery of {n_gallery} item(s)")
    head = min(candidates if candidates is not None else 2 * k1, available)
    depth = min(max(head, list_depth or 0), available)
    union = gallery if same_set else torch.cat([queries, gallery])
    n = union.shape[0]
    own_depth = min(max(k1, k2 - 1, depth if same_set else 1), n - 1)
    near_scores, nearest = exact_knn(union, own_depth, distance=distance, memory_budget=budget)
    everyone = torch.arange(n, device=union.device)
    lists = torch.cat([everyone[:, None], nearest], dim=1)
    list_distances = torch.cat([
        torch.zeros((n, 1), dtype=union.dtype, device=union.device),
        _distance_from_scores(union, near_scores, everyone, nearest, distance),
    ], dim=1)
    k1 = min(k1, n - 1)
    scale = float((2 * union.norm(dim=1).max()) ** 2) or 1.0
    encoded = _encoding(union, lists, list_distances, k1, scale, budget)
    encoded = _local_expansion(encoded, lists, k2)
    if same_set:
        query_rows = torch.arange(n, device=union.device)
        found, scores = nearest[:, :depth], near_scores[:, :depth]
        offset = 0
    else:
        scores, found = exact_knn(gallery, depth, queries=queries, distance=distance,
                                  memory_budget=budget)
        query_rows = torch.arange(queries.shape[0], device=union.device)
        offset = queries.shape[0]
    jaccard = _jaccard(encoded, query_rows, found[:, :head] + offset, budget // 4)
    original = _distance_from_scores(union, scores[:, :head], query_rows,
                                     found[:, :head] + offset, distance) / scale
    final = (1 - lambda_value) * jaccard + lambda_value * original
    order = torch.sort(final, dim=1, stable=True).indices
    tail = torch.full((found.shape[0], depth - head), float("inf"), dtype=final.dtype,
                      device=final.device)
    reranked = torch.cat([found[:, :head].gather(1, order), found[:, head:]], dim=1)
    return torch.cat([final.gather(1, order), tail], dim=1), reranked, found


# ---------------------------------------------------------------- average query expansion


def query_expansion(
    gallery: torch.Tensor,
    *,
    queries: torch.Tensor | None = None,
    num_neighbors: int = 2,
    alpha: float = 0.0,
    distance: str = "cosine",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """The expanded queries q' (module docstring), one row per query (per gallery item in
    same-set mode, whose own item is not one of its neighbours).

    Inputs are used as given (L2-normalise them first for cosine); for cosine q' is
    L2-normalised. ``alpha > 0`` needs cosine (the weights are powers of cosines).
    """
    check_rerank("query_expansion", {"num_neighbors": num_neighbors, "alpha": alpha})
    if alpha > 0 and distance != "cosine":
        raise ValueError(f"query expansion with alpha={alpha} weights by cosine similarity; "
                         f"it needs distance='cosine', got {distance!r}")
    rows = gallery if queries is None else queries
    available = gallery.shape[0] - (1 if queries is None else 0)
    if num_neighbors > available:
        raise ValueError(f"query expansion with num_neighbors={num_neighbors} needs that many "
                         f"gallery items per query; only {available} are available")
    scores, found = exact_knn(gallery, num_neighbors, queries=queries, distance=distance,
                              memory_budget=memory_budget)
    if alpha > 0:
        weights = scores.clamp_min(0) ** alpha
    else:
        weights = torch.ones_like(scores)
    step = max(1, memory_budget // (4 * num_neighbors * rows.shape[1] * rows.element_size()))
    expanded = torch.empty_like(rows)
    for s in range(0, rows.shape[0], step):
        w = weights[s:s + step]
        total = rows[s:s + step] + torch.einsum("nk,nkd->nd", w, gallery[found[s:s + step]])
        expanded[s:s + step] = total / (1 + w.sum(dim=1))[:, None]
    if distance == "cosine":
        expanded = torch.nn.functional.normalize(expanded, dim=1)
    return expanded


def search_excluding_self(gallery: torch.Tensor, rows: torch.Tensor, k: int, *,
                          distance: str, memory_budget: int) -> torch.Tensor:
    """Exact top-k gallery indices of ``rows[i]`` (one row per gallery item) never
    returning gallery item i: a search of depth k + 1 with item i removed from row i."""
    _, found = exact_knn(gallery, k + 1, queries=rows, distance=distance,
                         memory_budget=memory_budget)
    is_self = found == torch.arange(rows.shape[0], device=found.device)[:, None]
    order = torch.sort(is_self.to(torch.int8), dim=1, stable=True).indices[:, :k]
    return found.gather(1, order)


# ---------------------------------------------------------------- metrics on re-ranked lists


def _head_precision_sum(relevance: torch.Tensor) -> torch.Tensor:
    """sum over relevant positions i of (relevant items up to i) / i, per row."""
    hits = relevance.double()
    positions = torch.arange(1, relevance.shape[1] + 1, device=relevance.device).double()
    return (torch.cumsum(hits, dim=1) / positions * hits).sum(dim=1)


def reranked_retrieval(
    method: str,
    params: dict[str, Any] | None,
    gallery: torch.Tensor,
    query: torch.Tensor | None,
    gallery_codes: torch.Tensor,
    query_codes: torch.Tensor,
    counts: torch.Tensor,
    wanted: set[str],
    ks: list[int],
    distance: str,
    budget: int,
    make_step: Callable[[str], Any] | None = None,
) -> dict[str, float]:
    """Retrieval metrics of :func:`fairdml.evaluate` after re-ranking (same keys).

    ``query_expansion``: every metric is exact on the expanded queries (recall@K beyond
    the listed depth by counting, ``map`` over the full ranking); a gallery with fewer
    than ``num_neighbors`` candidates averages all of them. ``k_reciprocal``: the
    first ``candidates`` items are re-ranked and the rest of the ranking is unchanged, so
    recall@K beyond the list is counted in the original ranking (the first relevant item
    lies after the re-ranked head) and ``map`` is the original full-ranking AP with the
    head's terms sum m / rank(j_m) replaced by those of the re-ranked head (the relevant
    items in the head are the same set in both, so the later terms do not change).
    """
    full = check_rerank(method, params)
    same_set = query is None
    rows_emb = gallery if same_set else query
    need_r = bool(wanted & {"r_precision", "map@r"})
    available = gallery.shape[0] - (1 if same_set else 0)
    valid = counts > 0
    out: dict[str, float] = {}
    if (ks or need_r or "map" in wanted) and available >= 1:
        base = max(int(counts.max()) if need_r else 1, 1)
        depth = min(max([base] + [k for k in ks if k <= max(base, _LIST_DEPTH)]), available)
        if method == "query_expansion":
            rows_emb = query_expansion(
                gallery, queries=query, num_neighbors=min(full["num_neighbors"], available),
                alpha=full["alpha"], distance=distance, memory_budget=budget,
            )
            if same_set:
                found = search_excluding_self(gallery, rows_emb, depth, distance=distance,
                                              memory_budget=budget)
            else:
                _, found = exact_knn(gallery, depth, queries=rows_emb, distance=distance,
                                     memory_budget=budget)
            head = 0
        else:
            head = full["candidates"] or max(2 * full["k1"], base)
            head = min(head, available)
            _, found, original = _k_reciprocal(
                gallery, query, full["k1"], full["k2"], full["lambda"], head, distance, budget,
                list_depth=depth,
            )
        deep = [k for k in ks if k > found.shape[1]]
        count_missing = None
        if deep:
            def count_missing(missing: torch.Tensor) -> torch.Tensor:
                self_index = missing if same_set else None
                target, target_index = best_relevant(
                    rows_emb[missing], gallery, query_codes[missing], gallery_codes,
                    same_set=same_set, distance=distance, memory_budget=budget // 4,
                    self_index=self_index,
                )
                return count_ranked_before(
                    gallery, rows_emb[missing], target, target_index, self_index=self_index,
                    distance=distance, memory_budget=budget,
                )
        block = NeighborBlock(0, torch.zeros(found.shape, device=found.device), found)
        out = retrieval_from_neighbors([block], gallery_codes, query_codes, counts, ks,
                                       need_r, count_missing)
        for name in ("r_precision", "map@r"):
            if name not in wanted:
                out.pop(name, None)
        if "map" in wanted:
            on_step = make_step("full ranking (map)") if make_step else None
            mean_ap = full_average_precision(
                rows_emb, gallery, query_codes, gallery_codes, counts, same_set=same_set,
                distance=distance, memory_budget=budget, on_step=on_step,
            )
            if head and bool(valid.any()):
                mean_ap += _head_change(original[:, :head], found[:, :head], gallery_codes,
                                        query_codes, counts)
            out["map"] = mean_ap
    elif ks or need_r or "map" in wanted:
        out = {f"recall@{k}": float("nan") for k in ks}
        out.update({m: float("nan") for m in ("r_precision", "map@r", "map") if m in wanted})
    out["num_queries"] = float(int(valid.sum()))
    out["num_skipped_queries"] = float(int((~valid).sum()))
    return out


def _head_change(original: torch.Tensor, reranked: torch.Tensor, gallery_codes: torch.Tensor,
                 query_codes: torch.Tensor, counts: torch.Tensor) -> float:
    """Mean over valid queries of (AP after - AP before) from re-ordering the head."""
    valid = counts > 0
    before = gallery_codes[original] == query_codes[:, None]
    after = gallery_codes[reranked] == query_codes[:, None]
    change = (_head_precision_sum(after) - _head_precision_sum(before)) / counts.clamp_min(1)
    return exact_mean([change[valid]])
