"""Exact k-nearest-neighbour search: chunked matrix products with a running top-k.

Scores (higher is closer):

- ``cosine``: the dot product of L2-normalised rows (the caller normalises);
- ``euclidean``: the negative squared distance ``2 a.b - |a|^2 - |b|^2``; reported
  neighbour scores are clamped at 0 from above, so duplicates score exactly 0.

Order and tie-breaking: neighbours are sorted by score, highest first; equal scores are
broken by the lower gallery index first. The selection is exact under this strict total
order: the running top-k is updated with ``topk(k + 1)``, and a row whose k-th and
(k+1)-th candidates tie is re-selected with a stable two-key sort.

Same-set search (``gallery=None``) never returns an item as its own neighbour (by index:
an identical duplicate is a legitimate neighbour). It partitions the items into blocks
and multiplies each pair of blocks once: the product ``S = A_p A_q^T`` (p <= q) feeds the
top-k of the rows of block p and, transposed, of the rows of block q, which halves the
multiply-adds. The plain path used when the symmetric state does not fit the memory
budget computes block (p, q) with p > q as the transpose of the same ``A_q A_p^T``, so both
paths see bit-identical scores and return identical neighbours.

Speed: after the diagonal blocks have filled every row's top-k, a block only contributes
the entries at or above the row's current k-th score (the threshold, exact after every
block because each block's candidates are merged at once). They are found from the maxima
of 32-wide tiles of the row-major block: one reduction pass per direction (rows of the
block, and rows of its transpose via tiles of 32 rows), then only the hit tiles are read
again, so the transposed direction needs no strided pass and no copy. On CPU the matrix
products use all intra-op threads and the bookkeeping between them one thread: the many
small operations would otherwise each pay an OpenMP fork/join, which on a busy machine
costs more than the operation itself.

Memory: ``memory_budget`` bytes (default 1 GiB) bound the extra memory beyond the
normalised copy of the embeddings and the returned ``(n, k)`` arrays: the score block
``B x B`` (4 bytes each), the candidates, and, on the symmetric path only, the running
top-k of all ``N`` rows (``N * k * 8`` bytes with int32 indices; the budget check counts
``N * (k + max(k, 256)) * 8``, room for one offer per row; the plain path holds it for one
block of rows). Numbers do not depend on the block size except through float summation
order inside the matrix product, which can move a score by an ulp.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

DEFAULT_MEMORY_BUDGET = 1 << 30
_MIN_BLOCK = 64
_SPARSE_MAX_FRACTION = 0.2
_MIN_BUFFER = 256
_TILE = 32


@dataclass(frozen=True)
class NeighborBlock:
    """The neighbours of query rows ``start .. start + len(indices) - 1``, best first.

    ``above`` (only with ``rank_of``) counts, per row, the gallery items ranked before the
    item ``rank_of`` names (see :class:`RankCounter`).
    """

    start: int
    scores: torch.Tensor
    indices: torch.Tensor
    above: torch.Tensor | None = None


def lexsort_rows(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """The first ``k`` of each row ordered by value descending, then index ascending."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    values = values.gather(1, by_index)
    indices = indices.gather(1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def sort_rows(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows ordered by value descending, equal values by index ascending."""
    order = torch.sort(values, dim=1, descending=True).indices
    values, indices = values.gather(1, order), indices.gather(1, order)
    if values.shape[1] > 1:
        tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
        if bool(tied.any()):
            rows = torch.nonzero(tied).flatten()
            values[rows], indices[rows] = lexsort_rows(values[rows], indices[rows], values.shape[1])
    return values, indices


def select_topk(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Exact top-``k`` of each row under (value desc, index asc), in no particular order.

    ``indices`` may be an expanded (broadcast) tensor. Rows need at least ``k`` candidates
    (callers pad with ``-inf``).
    """
    n, m = values.shape
    if m < k:
        raise ValueError(f"select_topk needs at least k={k} candidates per row, got {m}")
    if m == k:
        return values.clone(), indices.contiguous().clone()
    top_values, positions = torch.topk(values, k + 1, dim=1, sorted=False)
    top_indices = indices.gather(1, positions)
    lowest, lowest_at = top_values.min(dim=1)
    tied = (top_values == lowest[:, None]).sum(dim=1) > 1
    # Drop the (k+1)-th: overwrite it with the last column, then cut the last column off.
    rows = torch.arange(n, device=values.device)
    top_values[rows, lowest_at] = top_values[:, k].clone()
    top_indices[rows, lowest_at] = top_indices[:, k].clone()
    out_values, out_indices = top_values[:, :k], top_indices[:, :k]
    if bool(tied.any()):
        rows = torch.nonzero(tied).flatten()
        exact_values, exact_indices = lexsort_rows(
            values[rows], indices[rows].contiguous(), k
        )
        out_values[rows] = exact_values
        out_indices[rows] = exact_indices
    return out_values, out_indices



def row_candidates(
    scores: torch.Tensor, threshold: torch.Tensor, tile: int, max_fraction: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(row, column)`` of the entries with ``scores[i, j] >= threshold[i]``, grouped by row.

    ``scores`` must have unit column stride. The maxima of column tiles of width ``tile``
    are compared first (one pass over the block); only tiles whose maximum reaches the
    row's threshold are read again. Returns ``None`` when the hit tiles cover more than
    ``max_fraction`` of the block (a dense selection is then cheaper).
    """
    n, m = scores.shape
    full = m - m % tile
    maxima = scores[:, :full].view(n, full // tile, tile).amax(dim=2)
    if full < m:
        maxima = torch.cat([maxima, scores[:, full:].amax(dim=1, keepdim=True)], dim=1)
    hit_rows, hit_tiles = torch.nonzero(maxima >= threshold[:, None]).unbind(1)
    if hit_rows.numel() * tile > max_fraction * n * m:
        return None
    columns = hit_tiles[:, None] * tile + torch.arange(tile, device=scores.device)
    values = scores[hit_rows[:, None], columns.clamp_max(m - 1)]
    inside = (values >= threshold[hit_rows, None]) & (columns < m)
    hit, offset = torch.nonzero(inside).unbind(1)
    return hit_rows[hit], columns[hit, offset]


def column_candidates(
    scores: torch.Tensor, threshold: torch.Tensor, tile: int, max_fraction: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(column, row)`` of the entries with ``scores[i, j] >= threshold[j]``, grouped by
    column: the candidates of the rows of ``scores.T``, read from ``scores`` (unit column
    stride) through the maxima of row tiles of height ``tile`` (see :func:`row_candidates`).
    """
    n, m = scores.shape
    full = n - n % tile
    maxima = scores[:full].view(full // tile, tile, m).amax(dim=1)
    if full < n:
        maxima = torch.cat([maxima, scores[full:].amax(dim=0, keepdim=True)], dim=0)
    # Transposed before nonzero so that the hits come column by column.
    hits = (maxima >= threshold[None, :]).T.contiguous()
    hit_columns, hit_tiles = torch.nonzero(hits).unbind(1)
    if hit_columns.numel() * tile > max_fraction * n * m:
        return None
    rows = hit_tiles[:, None] * tile + torch.arange(tile, device=scores.device)
    values = scores[rows.clamp_max(n - 1), hit_columns[:, None]]
    inside = (values >= threshold[hit_columns, None]) & (rows < n)
    hit, offset = torch.nonzero(inside).unbind(1)
    return hit_columns[hit], rows[hit, offset]


class _Threads:
    """Intra-op threads on CPU: all of them for the matrix products, one for the rest.

    The bookkeeping between products (tile maxima aside) is many small operations; with
    several OpenMP threads each pays a fork/join, which on a busy machine (a descheduled
    worker) costs more than the operation. CUDA tensors are left alone.
    """

    def __init__(self, device: torch.device) -> None:
        self.cpu = device.type == "cpu"
        self.all = torch.get_num_threads()

    @contextlib.contextmanager
    def many(self) -> Iterator[None]:
        """All threads inside, the previous setting restored after."""
        with self._set(self.all):
            yield

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        """One thread inside, the previous setting restored after."""
        with self._set(1):
            yield

    @contextlib.contextmanager
    def _set(self, threads: int) -> Iterator[None]:
        before = torch.get_num_threads()
        if self.cpu and threads != before:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if self.cpu and threads != before:
                torch.set_num_threads(before)


class RunningTopK:
    """The best ``k`` (score, gallery index) pairs seen so far for ``n`` query rows.

    Each offer of candidates is merged at once (exact selection over the current top-k
    and the new candidates of the rows that got any), so the pre-filter threshold of a row,
    its current k-th score, rises after every block and later blocks offer fewer
    candidates. A row offers at most ``W = max(k, 256)`` candidates per block; a row
    with more offers its block top-k instead.
    """

    def __init__(
        self, n: int, k: int, n_gallery: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.k = k
        self.width = max(k, _MIN_BUFFER)
        self.threads = _Threads(device)
        self.index_dtype = torch.int32 if n_gallery < 2**31 - 1 else torch.int64
        self.placeholder = torch.iinfo(self.index_dtype).max
        # Placeholders (-inf, max index) sort after every real candidate; all are replaced
        # because every row has at least k real candidates.
        self.values = torch.full((n, k), float("-inf"), dtype=dtype, device=device)
        self.indices = torch.full((n, k), self.placeholder, dtype=self.index_dtype, device=device)
        self.threshold = torch.full((n,), float("-inf"), dtype=dtype, device=device)

    def _offer(self, rows: slice, row_ids: torch.Tensor, values: torch.Tensor,
               indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Merge candidates grouped by (local) row id, ``counts[i] <= W`` of them for row i."""
        k, device = self.k, counts.device
        touched = torch.nonzero(counts).flatten()
        if touched.numel() == 0:
            return
        width = int(counts.max())
        position = torch.cumsum(counts > 0, 0) - 1  # local row -> its line among ``touched``
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(row_ids.shape[0], device=device) - starts[row_ids]
        absolute = touched + rows.start
        pool_values = torch.full(
            (touched.numel(), k + width), float("-inf"), dtype=values.dtype, device=device
        )
        pool_indices = torch.full(
            (touched.numel(), k + width), self.placeholder, dtype=torch.int64, device=device
        )
        pool_values[:, :k] = self.values[absolute]
        pool_indices[:, :k] = self.indices[absolute]
        line = position[row_ids]
        pool_values[line, k + slot] = values
        pool_indices[line, k + slot] = indices.long()
        new_values, new_indices = select_topk(pool_values, pool_indices, k)
        self.values[absolute] = new_values
        self.indices[absolute] = new_indices.to(self.index_dtype)
        self.threshold[absolute] = new_values.min(dim=1).values

    def add_dense(self, rows: slice, scores: torch.Tensor, first_column: int) -> None:
        """Offer every entry of ``scores`` (rows x columns, any strides)."""
        n, m = scores.shape
        columns = torch.arange(first_column, first_column + m, device=scores.device)
        columns = columns.expand(n, m)
        if m > self.k:
            with self.threads.many():  # one large selection over the whole block
                best_values, best_indices = select_topk(scores, columns, self.k)
        else:
            best_values, best_indices = scores, columns
        width = best_values.shape[1]
        row_ids = torch.arange(n, device=scores.device).repeat_interleave(width)
        counts = torch.full((n,), width, dtype=torch.int64, device=scores.device)
        self._offer(rows, row_ids, best_values.reshape(-1), best_indices.reshape(-1), counts)

    def add(self, rows: slice, scores: torch.Tensor, first_column: int) -> None:
        """Offer the entries of ``scores`` that can enter the top-k (a pre-filter).

        ``scores`` is row-major or the transpose of a row-major block; either way the
        candidates are found from tile maxima of the row-major memory (no strided pass).
        """
        n, m = scores.shape
        threshold = self.threshold[rows]
        if m <= self.k or bool(torch.isinf(threshold).any()):
            self.add_dense(rows, scores, first_column)
            return
        if scores.stride(1) == 1:
            found = row_candidates(scores, threshold, _TILE, _SPARSE_MAX_FRACTION)
        else:
            found = column_candidates(scores.T, threshold, _TILE, _SPARSE_MAX_FRACTION)
        if found is None:
            self.add_dense(rows, scores, first_column)
            return
        row_ids, column_ids = found
        if row_ids.numel() == 0:
            return
        counts = torch.bincount(row_ids, minlength=n)
        values, indices = scores[row_ids, column_ids], column_ids + first_column
        crowded = counts > self.width
        if bool(crowded.any()):
            # Rows with more candidates than one offer holds offer their block top-k.
            keep = ~crowded[row_ids]
            row_ids, values, indices = row_ids[keep], values[keep], indices[keep]
            dense_rows = torch.nonzero(crowded).flatten()
            columns = torch.arange(first_column, first_column + m, device=scores.device)
            best_values, best_indices = select_topk(
                scores[dense_rows], columns.expand(dense_rows.numel(), m), self.k
            )
            row_ids = torch.cat([row_ids, dense_rows.repeat_interleave(self.k)])
            values = torch.cat([values, best_values.reshape(-1)])
            indices = torch.cat([indices, best_indices.reshape(-1)])
            order = torch.argsort(row_ids, stable=True)
            row_ids, values, indices = row_ids[order], values[order], indices[order]
            counts = torch.where(crowded, self.k, counts)
        self._offer(rows, row_ids, values, indices, counts)

    def finish(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' neighbours sorted best first (value desc, index asc)."""
        return sort_rows(self.values[rows], self.indices[rows].long())


class RankCounter:
    """Counts, for each query row, the gallery items ranked before one given item.

    For row q with target score ``t_q`` and target index ``j_q`` (e.g. its best relevant
    item), it counts items g != q, g != j_q with score > t_q, or score == t_q and g < j_q
    (the ranking's tie rule). With the target computed outside the block products (as
    :func:`fairdml.eval.metrics.best_relevant` does), a score within float rounding of
    ``t_q`` can be counted on either side; exact ties are resolved by the rule above.
    Rows with ``t_q = +inf`` count nothing.
    """

    def __init__(self, target: torch.Tensor, target_index: torch.Tensor, block: int) -> None:
        self.target = target
        self.target_index = target_index
        self.above = torch.zeros(target.shape[0], dtype=torch.int64, device=target.device)
        self.buffer = torch.empty(block * block, dtype=target.dtype, device=target.device)

    def _view(self, scores: torch.Tensor) -> torch.Tensor:
        n, m = scores.shape
        flat = self.buffer[: n * m]
        return flat.view(m, n).T if scores.stride(0) < scores.stride(1) else flat.view(n, m)

    def add(self, rows: slice, scores: torch.Tensor, first_column: int) -> None:
        n, m = scores.shape
        target = self.target[rows][:, None]
        flags = self._view(scores)
        torch.gt(scores, target, out=flags)
        greater = flags.sum(dim=1)
        torch.ge(scores, target, out=flags)
        at_least = flags.sum(dim=1)
        counts = greater.round().long()
        # The target item itself is never counted, whatever its score here.
        local = self.target_index[rows] - first_column
        inside = torch.nonzero((local >= 0) & (local < m)).flatten()
        if inside.numel():
            own = scores[inside, local[inside]]
            counts[inside] -= (own > target[inside, 0]).long()
            at_least[inside] -= (own >= target[inside, 0]).to(at_least.dtype)
        tied = torch.nonzero(at_least > greater).flatten()
        if tied.numel():
            columns = torch.arange(first_column, first_column + m, device=scores.device)
            equal = scores[tied] == target[tied]
            before = columns[None, :] < self.target_index[rows][tied, None]
            counts[tied] += (equal & before).sum(dim=1)
        self.above[rows] += counts


def _block_bytes(block: int, k: int, itemsize: int) -> int:
    # score buffer + mask, nonzero output at the sparse limit, and the merge temporaries
    # (about three (block, 2k) arrays of value + int64 index).
    scores = block * block * (itemsize + 2)
    candidates = 16 * int(_SPARSE_MAX_FRACTION * block * block)
    merges = 3 * block * (k + max(k, _MIN_BUFFER)) * (itemsize + 8)
    return scores + candidates + merges


def choose_block(n: int, k: int, itemsize: int, budget: int) -> int:
    """The largest block edge (a multiple of 64, at most ``n``) whose buffers fit ``budget``."""
    block = _MIN_BLOCK
    while block < n and _block_bytes(min(2 * block, n), k, itemsize) <= budget:
        block *= 2
    return max(1, min(block, n))


class _ScoreBlocks:
    """Computes score blocks into one reused buffer (no per-block allocation)."""

    def __init__(
        self, rows: torch.Tensor, cols: torch.Tensor, distance: str, block: int
    ) -> None:
        self.rows, self.cols, self.distance = rows, cols, distance
        dtype, device = rows.dtype, rows.device
        self.threads = _Threads(device)
        self.buffer = torch.empty(block * block, dtype=dtype, device=device)
        if distance == "euclidean":
            self.row_sq = (rows * rows).sum(dim=1)
            self.col_sq = (cols * cols).sum(dim=1)

    def compute(self, r: slice, c: slice) -> torch.Tensor:
        a, b = self.rows[r], self.cols[c]
        out = self.buffer[: a.shape[0] * b.shape[0]].view(a.shape[0], b.shape[0])
        with self.threads.many():
            if self.distance == "cosine":
                torch.mm(a, b.T, out=out)
            else:
                torch.addmm(-self.col_sq[c][None, :], a, b.T, alpha=2.0, out=out)
                out.sub_(self.row_sq[r][:, None])
        return out


def _exclude_self(scores: torch.Tensor) -> None:
    scores.diagonal().fill_(float("-inf"))


def _bounds(n: int, block: int) -> list[slice]:
    return [slice(s, min(s + block, n)) for s in range(0, n, block)]


def _finalise(scores: torch.Tensor, distance: str) -> torch.Tensor:
    return scores.clamp_max(0.0) if distance == "euclidean" else scores


def iter_neighbors(
    gallery: torch.Tensor,
    k: int,
    *,
    queries: torch.Tensor | None = None,
    distance: str = "cosine",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    symmetric: bool | None = None,
    block_size: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    rank_of: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[NeighborBlock]:
    """Yield the exact ``k`` nearest gallery items of every query, one block of rows at a time.

    ``gallery`` and ``queries`` must already be normalised for cosine. Without ``queries``
    every gallery item queries all the others (same-set). ``symmetric`` forces the
    symmetric (True) or plain (False) same-set path; ``None`` picks symmetric when its
    state fits ``memory_budget``. ``block_size`` overrides the block edge derived from the
    budget. ``on_step(done, total)`` reports progress in score blocks. ``rank_of = (target
    score, target index)`` per query row adds a :class:`RankCounter` in the same pass
    (``NeighborBlock.above``).
    """
    same_set = queries is None
    rows = gallery if same_set else queries
    n_rows, n_cols = rows.shape[0], gallery.shape[0]
    available = n_cols - 1 if same_set else n_cols
    if not 1 <= k <= available:
        raise ValueError(
            f"k must be between 1 and {available} (the number of gallery candidates), got {k}"
        )
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    itemsize = rows.element_size()
    state_bytes = n_rows * (k + max(k, _MIN_BUFFER)) * (itemsize + 4)
    if same_set and symmetric is None:
        symmetric = state_bytes <= 0.6 * memory_budget
    if block_size is None:
        left = memory_budget - (state_bytes if (same_set and symmetric) else 0)
        counting = 0 if rank_of is None else itemsize  # the RankCounter's flag buffer
        block = choose_block(
            max(n_rows, n_cols), k, itemsize + counting, max(left, memory_budget // 4)
        )
    else:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        block = block_size
    scorer = _ScoreBlocks(rows, gallery, distance, block)
    counter = None if rank_of is None else RankCounter(rank_of[0], rank_of[1], block)
    if same_set and symmetric:
        yield from _symmetric(scorer, counter, n_rows, k, block, distance, on_step)
    else:
        yield from _plain(
            scorer, counter, n_rows, n_cols, k, block, same_set, distance, on_step
        )


def _symmetric(scorer, counter, n, k, block, distance, on_step) -> Iterator[NeighborBlock]:
    parts = _bounds(n, block)
    total = len(parts) * (len(parts) + 1) // 2
    done = 0
    state = RunningTopK(n, k, n, scorer.rows.dtype, scorer.rows.device)
    with scorer.threads.one():
        for p in parts:  # diagonal blocks first: they fill every row's top-k
            scores = scorer.compute(p, p)
            _exclude_self(scores)
            state.add_dense(p, scores, p.start)
            if counter is not None:
                counter.add(p, scores, p.start)
            done += 1
            if on_step:
                on_step(done, total)
    for i, p in enumerate(parts):
        with scorer.threads.one():
            for q in parts[i + 1 :]:
                scores = scorer.compute(p, q)
                state.add(p, scores, q.start)
                state.add(q, scores.T, p.start)
                if counter is not None:
                    counter.add(p, scores, q.start)
                    counter.add(q, scores.T, p.start)
                done += 1
                if on_step:
                    on_step(done, total)
            values, indices = state.finish(p)
        above = None if counter is None else counter.above[p]
        yield NeighborBlock(p.start, _finalise(values, distance), indices, above)


def _plain(scorer, counter, n_rows, n_cols, k, block, same_set, distance, on_step):
    row_parts = _bounds(n_rows, block)
    col_parts = _bounds(n_cols, block)
    total = len(row_parts) * len(col_parts)
    done = 0
    for i, r in enumerate(row_parts):
        state = RunningTopK(r.stop - r.start, k, n_cols, scorer.rows.dtype, scorer.rows.device)
        local = slice(0, r.stop - r.start)
        # Same-set: the diagonal block first (it fills the top-k); p > q blocks are the
        # transposes of the products the symmetric path computes, for identical scores.
        order = [i] + [j for j in range(len(col_parts)) if j != i] if same_set else None
        with scorer.threads.one():
            for j in order if same_set else range(len(col_parts)):
                c = col_parts[j]
                if same_set and j < i:
                    scores = scorer.compute(c, r).T
                else:
                    scores = scorer.compute(r, c)
                if same_set and j == i:
                    _exclude_self(scores)
                    state.add_dense(local, scores, c.start)
                else:
                    state.add(local, scores, c.start)
                if counter is not None:
                    counter.add(r, scores, c.start)
                done += 1
                if on_step:
                    on_step(done, total)
            values, indices = state.finish(local)
        above = None if counter is None else counter.above[r]
        yield NeighborBlock(r.start, _finalise(values, distance), indices, above)


def count_ranked_before(
    gallery: torch.Tensor,
    queries: torch.Tensor,
    target: torch.Tensor,
    target_index: torch.Tensor,
    *,
    self_index: torch.Tensor | None = None,
    distance: str = "cosine",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """For each query, the gallery items ranked before its target (see :class:`RankCounter`).

    ``self_index`` (same-set use with a subset of the items as queries) names each query's
    own gallery index, which is never counted. One chunked pass over queries x gallery.
    """
    n_rows, n_cols = queries.shape[0], gallery.shape[0]
    block = choose_block(max(n_rows, n_cols), 1, 2 * queries.element_size(), memory_budget)
    scorer = _ScoreBlocks(queries, gallery, distance, block)
    counter = RankCounter(target, target_index, block)
    for r in _bounds(n_rows, block):
        for c in _bounds(n_cols, block):
            scores = scorer.compute(r, c)
            if self_index is not None:
                local = self_index[r] - c.start
                inside = torch.nonzero((local >= 0) & (local < c.stop - c.start)).flatten()
                scores[inside, local[inside]] = float("-inf")
            counter.add(r, scores, c.start)
    return counter.above


def exact_knn(
    gallery: torch.Tensor,
    k: int,
    *,
    queries: torch.Tensor | None = None,
    distance: str = "cosine",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    symmetric: bool | None = None,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All neighbours at once: ``(scores, indices)`` of shape ``(n_queries, k)``, best first.

    Inputs are used as given (normalise them first for cosine). See :func:`iter_neighbors`.
    """
    parts = list(
        iter_neighbors(
            gallery,
            k,
            queries=queries,
            distance=distance,
            memory_budget=memory_budget,
            symmetric=symmetric,
            block_size=block_size,
        )
    )
    return torch.cat([p.scores for p in parts]), torch.cat([p.indices for p in parts])
