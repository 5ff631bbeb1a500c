"""The public :func:`evaluate`: retrieval and clustering metrics of embeddings."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from fairdml.eval.approximate import KINDS as APPROXIMATE_KINDS
from fairdml.eval.approximate import approximate_knn
from fairdml.eval.clustering import clustering_metrics
from fairdml.eval.inputs import check_distance, normalise, prepare_inputs
from fairdml.eval.metrics import (
    best_relevant,
    full_average_precision,
    relevant_counts,
    retrieval_from_neighbors,
)
from fairdml.eval.neighbors import (
    DEFAULT_MEMORY_BUDGET,
    NeighborBlock,
    count_ranked_before,
    iter_neighbors,
)
from fairdml.eval.rerank import check_rerank, reranked_retrieval

METRICS = ("recall", "r_precision", "map@r", "map", "nmi", "f1")
_AUTO_PROGRESS_WORK = 2e10
_LIST_DEPTH = 128  # recall@K with K above this (and above max R) is counted, not listed


def parse_metrics(
    metrics: Sequence[str] | None, recall_ks: Sequence[int]
) -> tuple[set[str], list[int]]:
    """The set of metric families asked for and the sorted list of recall Ks."""
    ks = _check_ks(recall_ks)
    if metrics is None:
        return set(METRICS), ks
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted: set[str] = set()
    extra_ks: list[int] = []
    for name in metrics:
        if name.startswith("recall@"):
            try:
                extra_ks.append(int(name.split("@", 1)[1]))
            except ValueError:
                raise ValueError(f"metric {name!r}: expected recall@<positive int>") from None
            wanted.add("recall@")
        elif name in METRICS:
            wanted.add(name)
        elif name in ("nmi_std", "num_queries", "num_skipped_queries"):
            wanted.add({"nmi_std": "nmi"}.get(name, "counts"))
        else:
            raise ValueError(
                f"unknown metric {name!r}; expected one of {list(METRICS)} or recall@K"
            )
    if "recall@" in wanted:
        wanted.discard("recall@")
        ks = _check_ks(extra_ks) if "recall" not in wanted else sorted(set(ks + extra_ks))
        wanted.add("recall")
    elif "recall" not in wanted:
        ks = []
    return wanted, ks


def _check_ks(recall_ks: Sequence[int]) -> list[int]:
    ks = []
    for k in recall_ks:
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"recall_ks must be positive integers, got {k!r}")
        ks.append(int(k))
    return sorted(set(ks))


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """A factory of ``on_step(done, total)`` callbacks, each one a rich progress task."""
    if not enabled:
        yield lambda description: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:

        def make(description: str) -> Callable[[int, int], None]:
            task = bar.add_task(description, total=None)

            def step(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return step

        yield make


def evaluate(
    embeddings: Any,
    labels: Any,
    *,
    queries: Any = None,
    query_labels: Any = None,
    metrics: Sequence[str] | None = None,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    distance: str = "cosine",
    kmeans_seeds: Sequence[int] = (0,),
    kmeans_max_iter: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
    search: str = "exact",
    rerank: str | None = None,
    rerank_params: dict | None = None,
) -> dict[str, float]:
    """Retrieval and clustering metrics of embeddings, exact (definitions in :mod:`.metrics`
    and :mod:`.clustering`).

    Without ``queries`` every item queries all others and never retrieves itself; with
    ``queries`` and ``query_labels`` the queries search ``embeddings`` (In-Shop style).
    ``metrics`` picks a subset of ``recall`` (all ``recall_ks``), ``recall@K``,
    ``r_precision``, ``map@r``, ``map``, ``nmi``, ``f1``; ``None`` computes all, and only
    what the subset needs is computed. Arrays may be numpy or torch on any device; the work
    runs on the device of ``embeddings``. ``distance`` is ``"cosine"`` (after L2
    normalisation) or ``"euclidean"``. Clustering uses all items (gallery and queries).
    ``memory_budget`` (bytes) bounds the extra working memory of the search; ``progress``
    shows a bar (``None``: only on a terminal and for large inputs). ``search`` is
    ``"exact"`` (default) or ``"faiss-ivf"`` / ``"faiss-hnsw"`` (approximate neighbour
    lists for recall@K, r_precision and map@r, see :mod:`.approximate`; ``map`` stays exact).

    Returns ``recall@K``, ``r_precision``, ``map@r``, ``map``, ``nmi``, ``nmi_std``, ``f1``
    (those asked for), and ``num_queries`` / ``num_skipped_queries`` (queries with no
    relevant gallery item, excluded from the retrieval means) with any retrieval metric.

    ``rerank`` (``"k_reciprocal"`` or ``"query_expansion"``, parameters in
    ``rerank_params``) re-ranks before the retrieval metrics, exactly as documented in
    :mod:`.rerank` (needs ``search="exact"``); clustering metrics are unaffected.
    """
    check_distance(distance)
    check_rerank(rerank, rerank_params)
    if rerank is not None and search != "exact":
        raise ValueError(f"rerank={rerank!r} needs search='exact', got search={search!r}")
    if search not in ("exact", *APPROXIMATE_KINDS):
        raise ValueError(f"search must be 'exact' or one of {APPROXIMATE_KINDS}, got {search!r}")
    wanted, ks = parse_metrics(metrics, recall_ks)
    data = prepare_inputs(embeddings, labels, queries, query_labels)
    gallery, query = data.gallery, data.queries
    if distance == "cosine":
        _refuse_zero_rows(gallery, "embeddings")
        if query is not None:
            _refuse_zero_rows(query, "queries")
        gallery = normalise(gallery)
        query = normalise(query) if query is not None else None
    rows = gallery if query is None else query
    query_codes = data.gallery_codes if query is None else data.query_codes
    if progress is None:
        work = rows.shape[0] * gallery.shape[0] * gallery.shape[1]
        progress = work > _AUTO_PROGRESS_WORK and sys.stderr.isatty()
    results: dict[str, float] = {}
    with _progress(bool(progress)) as make_step:
        retrieval = wanted & {"recall", "r_precision", "map@r", "map", "counts"}
        if retrieval:
            counts = relevant_counts(
                data.gallery_codes, query_codes, data.num_classes, data.same_set
            )
            if rerank is not None:
                results.update(
                    reranked_retrieval(
                        rerank, rerank_params, gallery, query, data.gallery_codes,
                        query_codes, counts, wanted, ks, distance, memory_budget, make_step,
                    )
                )
            else:
                results.update(
                    _retrieval(
                        gallery, query, data.gallery_codes, query_codes, counts, wanted, ks,
                        distance, memory_budget, make_step, search,
                    )
                )
        if wanted & {"nmi", "f1"}:
            items = gallery if query is None else torch.cat([gallery, query])
            codes = (
                data.gallery_codes
                if query is None
                else torch.cat([data.gallery_codes, data.query_codes])
            )
            results.update(
                clustering_metrics(
                    normalise(items),
                    codes,
                    data.num_classes,
                    seeds=list(kmeans_seeds),
                    max_iter=kmeans_max_iter,
                    memory_budget=memory_budget,
                    want=sorted(wanted & {"nmi", "f1"}),
                    make_step=make_step,
                )
            )
    return results


def _refuse_zero_rows(x: torch.Tensor, name: str) -> None:
    zero = (x == 0).all(dim=1)
    if bool(zero.any()):
        first = torch.nonzero(zero).flatten()[:5].tolist()
        raise ValueError(
            f"{name} has {int(zero.sum())} all-zero rows (first: {first}); cosine similarity "
            "is undefined for them: fix the model output or pass distance='euclidean'"
        )


def _retrieval(
    gallery, query, gallery_codes, query_codes, counts, wanted, ks, distance, budget, make_step,
    search="exact",
) -> dict[str, float]:
    need_r = bool(wanted & {"r_precision", "map@r"})
    available = gallery.shape[0] - (1 if query is None else 0)
    out: dict[str, float] = {}
    if (ks or need_r) and available >= 1:
        # The neighbour list holds max R (for the R metrics) and small Ks; recall@K for
        # larger K comes from counting the items ranked before the best relevant one.
        # Once counting runs, every K beyond max R is counted: the list stays short.
        base = max(int(counts.max()) if need_r else 1, 1)
        deep_ks = [k for k in ks if k > base]
        if max(ks, default=0) <= max(base, _LIST_DEPTH):
            deep_ks = []
        depth = min(max([base] + [k for k in ks if k not in deep_ks]), available)
        if search != "exact":
            deep_ks = []
            depth = min(max([base] + ks), available)
        if search == "exact":
            blocks = iter_neighbors(
                gallery,
                depth,
                queries=query,
                distance=distance,
                memory_budget=budget,
                on_step=make_step("nearest neighbours"),
            )
        else:
            found = approximate_knn(gallery, depth, kind=search, queries=query, distance=distance)
            blocks = [NeighborBlock(0, *found)]
        count_missing = None
        if deep_ks:
            rows_emb = gallery if query is None else query

            def count_missing(missing: torch.Tensor) -> torch.Tensor:
                # Second pass, only for queries whose first relevant item is not listed.
                target, target_index = best_relevant(
                    rows_emb[missing], gallery, query_codes[missing], gallery_codes,
                    same_set=query is None, distance=distance, memory_budget=budget // 4,
                    self_index=missing if query is None else None,
                )
                return count_ranked_before(
                    gallery, rows_emb[missing], target, target_index,
                    self_index=missing if query is None else None,
                    distance=distance, memory_budget=budget,
                )

        out = retrieval_from_neighbors(
            blocks, gallery_codes, query_codes, counts, ks, need_r, count_missing
        )
        for name in ("r_precision", "map@r"):
            if name not in wanted:
                out.pop(name, None)
    elif ks or need_r:  # a one-item gallery in same-set mode: every query is skipped
        out = {f"recall@{k}": float("nan") for k in ks}
        out.update({name: float("nan") for name in ("r_precision", "map@r") if name in wanted})
    out["num_queries"] = float(int((counts > 0).sum()))
    out["num_skipped_queries"] = float(int((counts <= 0).sum()))
    if "map" in wanted:
        out["map"] = full_average_precision(
            gallery if query is None else query,
            gallery,
            query_codes,
            gallery_codes,
            counts,
            same_set=query is None,
            distance=distance,
            memory_budget=budget,
            on_step=make_step("full ranking (map)"),
        )
    return out
