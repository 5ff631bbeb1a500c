"""Clustering metrics: k-means in torch, NMI and the pair-counting F1.

k-means (Lloyd) runs on the L2-normalised embeddings, on their device, with k = number
of classes. Initialisation is D^2 sampling (k-means++, Arthur & Vassilvitskii, SODA 2007)
drawn in rounds: each round samples ``ceil(k / 16)`` new centres without replacement with
probability proportional to the squared distance to the nearest centre so far, then
updates those distances with one matrix product. With k <= 16 this is exactly k-means++;
at SOP scale (k = 11,316) it costs about one Lloyd iteration instead of k sequential
passes (the batched variant is in the spirit of k-means||, Bahmani et al., VLDB 2012).
The initialisation's distance updates also give every point its nearest centre, so the
first Lloyd step starts from them without an assignment pass. Lloyd iterations stop when
at most ``CONVERGED_FRACTION`` (1e-4) of the points changed cluster in the last step (no
change at all below 10,000 points; at SOP scale at most 6 points, each of which moves
NMI by O(1/n)), or after ``max_iter``; the default
(``None``) spends a budget of 2e12 multiply-adds (n * k * d per iteration), clamped to
5..50 iterations, so that SOP-sized problems finish in about a minute on two CPU cores.
A cluster that becomes empty takes the point farthest from its centre.

- NMI(Y, C) = 2 I(Y; C) / (H(Y) + H(C)) (arithmetic normalisation), from scikit-learn.
- F1 (Song et al., CVPR 2016) over item pairs: precision = same-cluster pairs sharing a
  class / same-cluster pairs, recall = same-cluster pairs sharing a class / pairs sharing
  a class, F1 = 2PR / (P + R), computed from the contingency table (no pair enumeration).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

KMEANS_WORK_BUDGET = 2e12
CONVERGED_FRACTION = 1e-4
_INIT_ROUNDS = 16


def _chunk_rows(k: int, itemsize: int, budget: int) -> int:
    return max(1, budget // max(1, 2 * k * itemsize))


class _Assigner:
    """Nearest centre of every row of ``x``, by chunked ``x c^T - |c|^2 / 2`` and argmax.

    The score buffer is allocated once and reused (no per-chunk allocation)."""

    def __init__(self, x: torch.Tensor, max_centers: int, budget: int) -> None:
        self.x = x
        self.x_sq = (x * x).sum(dim=1)
        self.step = min(x.shape[0], _chunk_rows(max_centers, x.element_size(), budget))
        self.buffer = torch.empty(self.step * max_centers, dtype=x.dtype, device=x.device)

    def __call__(self, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the nearest centre and the squared distance to it."""
        x, k = self.x, centers.shape[0]
        neg_half_sq = -0.5 * (centers * centers).sum(dim=1)
        labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        best = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
        for s in range(0, x.shape[0], self.step):
            e = min(x.shape[0], s + self.step)
            scores = self.buffer[: (e - s) * k].view(e - s, k)
            torch.addmm(neg_half_sq[None, :], x[s:e], centers.T, out=scores)
            torch.max(scores, dim=1, out=(best[s:e], labels[s:e]))
        dist = (self.x_sq - 2 * best).clamp_min_(0)
        return labels, dist


def init_centers(
    x: torch.Tensor, k: int, generator: torch.Generator, budget: int
) -> torch.Tensor:
    """k distinct rows of ``x`` chosen by D^2 sampling in rounds (see module docstring)."""
    return seed_and_assign(x, k, generator, budget)[0]


def seed_and_assign(
    x: torch.Tensor, k: int, generator: torch.Generator, budget: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The centres of :func:`init_centers` and, from the same distance updates, every
    row's nearest centre (ties: the earlier centre) and squared distance to it, so that
    the first Lloyd step needs no assignment pass of its own."""
    n = x.shape[0]
    batch = math.ceil(k / _INIT_ROUNDS)
    assign = _Assigner(x, batch, budget)
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    chosen = torch.zeros(n, dtype=torch.bool, device=x.device)
    chosen[first] = True
    picked = [torch.tensor([first], device=x.device)]
    labels, min_dist = assign(x[first : first + 1])
    total = 1
    while total < k:
        take = min(batch, k - total)
        weights = min_dist.double()
        weights[chosen] = 0
        if int((weights > 0).sum()) < take:
            weights = (~chosen).double()  # fewer distinct points than centres left
        new = torch.multinomial(weights.cpu(), take, replacement=False, generator=generator)
        new = new.to(x.device)
        chosen[new] = True
        picked.append(new)
        labels_new, dist_new = assign(x[new])
        closer = dist_new < min_dist
        labels = torch.where(closer, labels_new + total, labels)
        torch.minimum(min_dist, dist_new, out=min_dist)
        total += take
    return x[torch.cat(picked)].clone(), labels, min_dist


def default_iterations(n: int, k: int, d: int) -> int:
    """Lloyd iterations within the multiply-add budget, clamped to 5..50."""
    return int(min(50, max(5, KMEANS_WORK_BUDGET // max(1, n * k * d))))


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    max_iter: int | None = None,
    memory_budget: int = 1 << 30,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Cluster assignments (int64, length n) of the rows of ``x`` into ``k`` clusters.

    ``on_step(done, total)`` reports progress (initialisation, then each iteration)."""
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of items ({n}), got k={k}")
    iterations = default_iterations(n, k, d) if max_iter is None else max_iter
    if iterations < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    centers, labels, dist = seed_and_assign(x, k, generator, memory_budget)
    assign = _Assigner(x, k, memory_budget)
    if on_step:
        on_step(1, iterations + 1)
    for iteration in range(iterations):
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        sizes = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(sizes == 0).flatten()
        centers = sums / sizes.clamp_min(1)[:, None].to(x.dtype)
        if empty.numel():
            far = torch.topk(dist, empty.numel()).indices
            centers[empty] = x[far]
        new_labels, dist = assign(centers)
        changed = int((new_labels != labels).sum())
        labels = new_labels
        settled = changed <= CONVERGED_FRACTION * n
        if on_step:
            on_step(iterations + 1 if settled else iteration + 2, iterations + 1)
        if settled:
            break
    return labels


def pair_f1(classes: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering F1 over item pairs (Song et al. 2016) from the contingency table."""
    from scipy import sparse

    n = len(classes)
    table = sparse.coo_matrix(
        (np.ones(n, dtype=np.int64), (classes, clusters)),
    ).tocsr()
    table.sum_duplicates()

    def pairs(counts: np.ndarray) -> float:
        counts = np.asarray(counts, dtype=np.float64).ravel()
        return float((counts * (counts - 1) / 2).sum())

    both = pairs(table.data)
    same_cluster = pairs(np.asarray(table.sum(axis=0)))
    same_class = pairs(np.asarray(table.sum(axis=1)))
    if same_cluster == 0 or same_class == 0 or both == 0:
        return 0.0
    precision, recall = both / same_cluster, both / same_class
    return 2 * precision * recall / (precision + recall)


def clustering_metrics(
    x: torch.Tensor,
    codes: torch.Tensor,
    num_classes: int,
    *,
    seeds: Sequence[int] = (0,),
    max_iter: int | None = None,
    memory_budget: int = 1 << 30,
    want: Sequence[str] = ("nmi", "f1"),
    make_step: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> dict[str, float]:
    """Mean NMI and F1 over k-means seeds, and the population std of NMI (``nmi_std``)."""
    if num_classes < 2:
        raise ValueError(
            f"clustering metrics need at least 2 classes, got {num_classes}; "
            "ask for retrieval metrics only"
        )
    if len(seeds) == 0:
        raise ValueError("kmeans_seeds must hold at least one seed")
    from sklearn.metrics import normalized_mutual_info_score

    classes = codes.cpu().numpy()
    nmis, f1s = [], []
    for seed in seeds:
        step = make_step(f"k-means (seed {seed})") if make_step else None
        clusters = kmeans(
            x, num_classes, seed=seed, max_iter=max_iter, memory_budget=memory_budget,
            on_step=step,
        ).cpu().numpy()
        if "nmi" in want:
            nmis.append(
                normalized_mutual_info_score(classes, clusters, average_method="arithmetic")
            )
        if "f1" in want:
            f1s.append(pair_f1(classes, clusters))
    out: dict[str, float] = {}
    if nmis:
        out["nmi"] = float(np.mean(nmis))
        out["nmi_std"] = float(np.std(nmis))
    if f1s:
        out["f1"] = float(np.mean(f1s))
    return out
