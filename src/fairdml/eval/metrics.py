"""Retrieval metrics from exact neighbour lists and from exact ranks.

Definitions (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020; REFERENCE.md).
For a query q with R relevant gallery items (same label; in same-set mode the query itself
is not part of the gallery) and rel(i) = 1 when the i-th nearest item is relevant:

- recall@K = 1 if some rel(i) = 1 for i <= K, else 0 (precision@1 for K = 1);
- r_precision = (1/R) * sum_{i<=R} rel(i);
- map@r = (1/R) * sum_{i<=R} rel(i) * P(i), with P(i) = (1/i) * sum_{j<=i} rel(j);
- map = (1/R) * sum over all positions i of rel(i) * P(i) (classic average precision).

Each metric is the mean over queries with R > 0; queries with R = 0 are counted in
``num_skipped_queries`` and excluded. The ranking is the one of :mod:`.neighbors`: score
descending, equal scores broken by the lower gallery index first. That convention is
deterministic but not neutral: with tied scores it decides which item counts as found.

How each is computed: r_precision and map@r from exact neighbour lists of depth max R;
recall@K from the rank of each query's first relevant item, read off the list when it is
there and otherwise counted (items scoring above the best relevant item's score, which is
computed class by class; a score within float rounding of it can land on either side);
map from exact ranks of all relevant items (:func:`full_average_precision`). Means use a
correctly rounded sum, so they do not depend on chunk sizes or on the order of queries.
Cosine scores of differently scaled duplicates can differ in the last bit after
normalisation, so their "ties" are decided by rounding, as in any float32 search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from fairdml.eval.neighbors import NeighborBlock, _bounds, _ScoreBlocks, choose_block


def relevant_counts(
    gallery_codes: torch.Tensor, query_codes: torch.Tensor, num_classes: int, same_set: bool
) -> torch.Tensor:
    """R for every query: gallery items sharing its label, minus itself in same-set mode."""
    per_class = torch.bincount(gallery_codes, minlength=num_classes)
    counts = per_class[query_codes]
    return counts - 1 if same_set else counts


def exact_mean(values: list[torch.Tensor]) -> float:
    """Mean of per-query values with a correctly rounded sum (``math.fsum``), so that the
    result does not depend on chunking or on the order of the queries."""
    flat = torch.cat(values).double().cpu().tolist() if values else []
    return math.fsum(flat) / len(flat) if flat else float("nan")


@dataclass
class RetrievalSums:
    """Per-query values collected block by block: the rank of the first relevant item
    when it is in the list (-1 otherwise), and r_precision / map@r of queries with R > 0."""

    num_rows: int
    first_rank: torch.Tensor | None = None
    r_precision: list[torch.Tensor] = field(default_factory=list)
    map_at_r: list[torch.Tensor] = field(default_factory=list)

    def add_block(
        self, start: int, relevance: torch.Tensor, counts: torch.Tensor, need_r_metrics: bool
    ) -> None:
        """``relevance``: (n, depth) booleans of the ranked neighbours; ``counts``: R."""
        if self.first_rank is None:
            self.first_rank = torch.full(
                (self.num_rows,), -1, dtype=torch.int64, device=relevance.device
            )
        found = relevance.any(dim=1)
        first = torch.argmax(relevance.to(torch.int8), dim=1) + 1
        rows = slice(start, start + relevance.shape[0])
        self.first_rank[rows] = torch.where(found, first, -1)
        valid = counts > 0
        if not need_r_metrics or not bool(valid.any()):
            return
        rel = relevance[valid]
        r = counts[valid]
        depth = rel.shape[1]
        if int(r.max()) > depth:
            raise RuntimeError(f"neighbour depth {depth} is below the largest R {int(r.max())}")
        positions = torch.arange(1, depth + 1, device=rel.device)
        within_r = positions[None, :] <= r[:, None]
        hits = (rel & within_r).double()
        r_double = r.double()
        self.r_precision.append(hits.sum(dim=1) / r_double)
        precision = torch.cumsum(hits, dim=1) / positions[None, :].double()
        self.map_at_r.append((precision * hits).sum(dim=1) / r_double)


def retrieval_from_neighbors(
    blocks: Iterable[NeighborBlock],
    gallery_codes: torch.Tensor,
    query_codes: torch.Tensor,
    counts: torch.Tensor,
    recall_ks: Sequence[int],
    need_r_metrics: bool,
    count_missing: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """recall@K, r_precision and map@r from neighbour blocks of depth >= max R (when the
    R metrics are asked for) and >= every K, unless ``count_missing(rows)`` is given: it
    returns, for the query rows whose first relevant item is not in the list, how many
    items rank before it (recall@K for K beyond the list depth)."""
    sums = RetrievalSums(num_rows=counts.shape[0])
    for block in blocks:
        rows = slice(block.start, block.start + block.indices.shape[0])
        relevance = gallery_codes[block.indices] == query_codes[rows, None]
        sums.add_block(block.start, relevance, counts[rows], need_r_metrics)
    valid = counts > 0
    first_rank = sums.first_rank
    if count_missing is not None:
        missing = torch.nonzero(valid & (first_rank < 0)).flatten()
        if missing.numel():
            first_rank[missing] = count_missing(missing) + 1
    num = int(valid.sum())
    out: dict[str, float] = {}
    for k in recall_ks:
        hit = (first_rank[valid] >= 1) & (first_rank[valid] <= k)
        out[f"recall@{k}"] = int(hit.sum()) / num if num else float("nan")
    if need_r_metrics:
        out["r_precision"] = exact_mean(sums.r_precision)
        out["map@r"] = exact_mean(sums.map_at_r)
    return out


def best_relevant(
    rows_emb: torch.Tensor,
    gallery: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    *,
    same_set: bool,
    distance: str,
    memory_budget: int,
    self_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score and index of every query's best relevant item (highest score, lowest index).

    Computed class by class (each query against the gallery items of its label only), so
    its cost is the sum of R over queries. Queries with R = 0 get (+inf, -1). In same-set
    mode a query's own gallery index is ``self_index`` (default: its row number).
    """
    n, dim = rows_emb.shape
    order = torch.argsort(gallery_codes, stable=True)
    num_classes = int(max(int(gallery_codes.max()), int(query_codes.max()))) + 1
    sizes = torch.bincount(gallery_codes, minlength=num_classes)
    starts = torch.cumsum(sizes, 0) - sizes
    width = max(int(sizes.max()), 1)
    target = torch.full((n,), float("inf"), dtype=rows_emb.dtype, device=rows_emb.device)
    target_index = torch.full((n,), -1, dtype=torch.int64, device=rows_emb.device)
    step = max(1, memory_budget // (8 * width * (dim + 4) * rows_emb.element_size()))
    offsets = torch.arange(width, device=rows_emb.device)
    for s in range(0, n, step):
        e = min(n, s + step)
        codes = query_codes[s:e]
        slot = starts[codes][:, None] + offsets[None, :]
        real = offsets[None, :] < sizes[codes][:, None]
        members = order[slot.clamp_max(gallery.shape[0] - 1)]
        if same_set:
            selves = (
                torch.arange(s, e, device=rows_emb.device) if self_index is None
                else self_index[s:e]
            )
            real &= members != selves[:, None]
        vectors = gallery[members]
        q = rows_emb[s:e]
        scores = torch.einsum("nd,nwd->nw", q, vectors)
        if distance == "euclidean":
            scores = 2 * scores - (q * q).sum(1)[:, None] - (vectors * vectors).sum(-1)
        scores = scores.masked_fill(~real, float("-inf"))
        best = scores.max(dim=1).values
        is_best = (scores == best[:, None]) & real
        index = torch.where(is_best, members, torch.full_like(members, gallery.shape[0]))
        found = real.any(dim=1)
        target[s:e] = torch.where(found, best, torch.full_like(best, float("inf")))
        target_index[s:e] = torch.where(found, index.min(dim=1).values, -1)
    return target, target_index


def _relevant_scores(scorer, r, col_parts, codes_r, gallery_codes, same_set):
    """Per query row of ``r``: its relevant (score, gallery index) pairs, from the products."""
    rows, cols, vals = [], [], []
    for c in col_parts:
        scores = scorer.compute(r, c)
        rel = codes_r[:, None] == gallery_codes[c][None, :]
        if same_set:
            _drop_self(rel, r, c)
        i, j = torch.nonzero(rel).unbind(1)
        rows.append(i)
        cols.append(j + c.start)
        vals.append(scores[i, j])
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def _drop_self(mask: torch.Tensor, r: slice, c: slice) -> None:
    lo, hi = max(r.start, c.start), min(r.stop, c.stop)
    if lo < hi:
        idx = torch.arange(lo, hi, device=mask.device)
        mask[idx - r.start, idx - c.start] = False


def _padded_ascending(rows, cols, vals, n, counts_r, dtype):
    """(n, Rmax) relevant scores in reverse ranking order: ascending score, and among equal
    scores descending index (the lower index ranks first). Pads are +inf, index -1."""
    width = max(int(counts_r.max()), 1)
    for key in ("cols", "vals", "rows"):
        current = {"cols": cols, "vals": vals, "rows": rows}[key]
        order = torch.sort(current, descending=key == "cols", stable=True).indices
        rows, cols, vals = rows[order], cols[order], vals[order]
    starts = torch.cumsum(counts_r, 0) - counts_r
    slot = torch.arange(rows.shape[0], device=rows.device) - starts[rows]
    asc_vals = torch.full((n, width), float("inf"), dtype=dtype, device=vals.device)
    asc_idx = torch.full((n, width), -1, dtype=torch.int64, device=vals.device)
    asc_vals[rows, slot] = vals
    asc_idx[rows, slot] = cols
    return asc_vals, asc_idx


def full_average_precision(
    rows_emb: torch.Tensor,
    gallery: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    counts: torch.Tensor,
    *,
    same_set: bool,
    distance: str,
    memory_budget: int,
    on_step: Callable[[int, int], None] | None = None,
) -> float:
    """Mean average precision over the full ranking (``map``), exact, without a full sort.

    For query q with relevant items j_1..j_R in ranking order, rank(j_m) = m + c_m where
    c_m counts the non-relevant items ranked before j_m (higher score, or equal score and
    lower index). AP = (1/R) * sum_m m / rank(j_m). Two chunked passes over the products:
    one collects the relevant scores, one counts for each non-relevant item how many
    relevant items it precedes (``searchsorted`` + ``bincount``). Memory is bounded by the
    block size and by (rows x max R).
    """
    n_rows, n_cols = rows_emb.shape[0], gallery.shape[0]
    block = choose_block(max(n_rows, n_cols), 8, rows_emb.element_size() + 16, memory_budget // 4)
    scorer = _ScoreBlocks(rows_emb, gallery, distance, block)
    row_parts, col_parts = _bounds(n_rows, block), _bounds(n_cols, block)
    total, done, ap_values = 2 * len(row_parts) * len(col_parts), 0, []
    for r in row_parts:
        n = r.stop - r.start
        counts_r = counts[r].clamp_min(0)
        codes_r = query_codes[r]
        rr, cc, vv = _relevant_scores(scorer, r, col_parts, codes_r, gallery_codes, same_set)
        done += len(col_parts)
        asc_vals, asc_idx = _padded_ascending(rr, cc, vv, n, counts_r, rows_emb.dtype)
        width = asc_vals.shape[1]
        histogram = torch.zeros(n * (width + 1), dtype=torch.int64, device=rows_emb.device)
        offsets = torch.arange(n, device=rows_emb.device)[:, None] * (width + 1)
        for c in col_parts:
            scores = scorer.compute(r, c)
            drop = codes_r[:, None] == gallery_codes[c][None, :]
            scores.masked_fill_(drop, float("-inf"))
            if same_set:
                _drop_self_scores(scores, r, c)
            below = torch.searchsorted(asc_vals, scores, side="left")
            histogram += torch.bincount((below + offsets).flatten(), minlength=n * (width + 1))
            _add_exact_ties(histogram, scores, asc_vals, asc_idx, below, c, width)
            done += 1
            if on_step:
                on_step(done, total)
        preceding = _preceding_counts(histogram.view(n, width + 1))
        valid = counts_r > 0
        positions = torch.arange(width, device=rows_emb.device)
        m = (counts_r[:, None] - positions[None, :]).double()  # 1-based rank among relevant
        real = positions[None, :] < counts_r[:, None]
        ap = torch.where(real, m / (m + preceding.double()), torch.zeros_like(m)).sum(dim=1)
        ap_values.append(ap[valid] / counts_r[valid].double())
    return exact_mean(ap_values)


def _drop_self_scores(scores: torch.Tensor, r: slice, c: slice) -> None:
    lo, hi = max(r.start, c.start), min(r.stop, c.stop)
    if lo < hi:
        idx = torch.arange(lo, hi, device=scores.device)
        scores[idx - r.start, idx - c.start] = float("-inf")


def _preceding_counts(histogram: torch.Tensor) -> torch.Tensor:
    """c_t = items with ``below > t`` = items scoring above ascending relevant position t."""
    above = torch.flip(torch.cumsum(torch.flip(histogram, [1]), dim=1), [1])
    return above[:, 1:]


def _add_exact_ties(histogram, scores, asc_vals, asc_idx, below, c, width):
    """Items scoring exactly like a relevant item precede it when their index is lower.

    ``below`` counted them as preceding only the relevant items with strictly lower score;
    for each tie, add one at the position just past the tied relevant items it beats.
    """
    # A tie means the first relevant score at or above the item equals it: one gather.
    at = asc_vals.gather(1, below.clamp_max(width - 1))
    tie_rows, tie_cols = torch.nonzero((below < width) & (at == scores)).unbind(1)
    if tie_rows.numel() == 0:
        return
    item = tie_cols + c.start
    lo = below[tie_rows, tie_cols]
    value = scores[tie_rows, tie_cols]
    # Ascending positions lo, lo+1, ... hold the tied relevant items (a run of equal
    # scores) in descending index order; the item precedes those with a higher index.
    beaten = torch.zeros_like(lo)
    pos = lo.clone()
    inside = torch.ones_like(lo, dtype=torch.bool)
    while bool(inside.any()):
        safe = pos.clamp_max(width - 1)
        inside &= (pos < width) & (asc_vals[tie_rows, safe] == value)
        beaten += (inside & (item < asc_idx[tie_rows, safe])).long()
        pos += 1
    # Moving the item's bin from ``lo`` to ``lo + beaten`` makes it precede those too.
    flat_old = tie_rows * (width + 1) + lo
    flat_new = tie_rows * (width + 1) + lo + beaten
    histogram.index_add_(0, flat_old, -torch.ones_like(flat_old))
    histogram.index_add_(0, flat_new, torch.ones_like(flat_new))
