"""Ranking and average-precision surrogate losses: histogram, fastap, ranked_list, smooth_ap,
roadmap, recall_at_k.

All losses compare L2-normalised embeddings (the papers' setting), compute in float32 with
autocast switched off (``exp(x / 0.01)`` in bfloat16 is meaningless), and return 0 with a
zero gradient when the batch holds nothing to learn from: no positive pair (ranked_list
still pushes negatives beyond its boundary, as in the paper) or, for histogram, no negative
pair.

The smooth-rank losses (smooth_ap, roadmap, recall_at_k) need, for every query ``q`` and
every positive ``p`` of ``q``, a sum over all items ``j`` of a function of
``s_qj - s_qp``: a B x P x B tensor where P is the largest number of positives of a query
(M - 1 for a C x M class-balanced batch), not the B x B x B tensor of a naive
implementation. The queries are processed in row chunks that keep that tensor below a
memory budget, each chunk computing its own rows of the similarity matrix; when there is
more than one chunk each chunk is recomputed in the backward pass (activation
checkpointing), so memory stays ~ chunk x P x B plus the embeddings for very large batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fairdml.losses import register
from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    l2_normalize,
    label_masks,
    mean_of_nonzero,
    normalized_euclidean_matrix,
)

# Elements of the per-chunk (rows x P x N) tensor; 2**22 floats = 16 MiB per buffer.
DEFAULT_CHUNK_ELEMENTS = 2**22


def _zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A 0 that stays connected to the graph, so ``backward`` gives a zero gradient."""
    return embeddings.sum() * 0.0


def _check_positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _prepare(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Check shapes and return the float32, L2-normalised embeddings."""
    check_embeddings_and_labels(embeddings, labels)
    return l2_normalize(as_float32(embeddings))


# --------------------------------------------------------------------------------------
# Histogram loss
# --------------------------------------------------------------------------------------


def _pair_histograms(values: torch.Tensor, is_negative: torch.Tensor, keep: torch.Tensor,
                     low: float, step: float, num_nodes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-interpolation ("soft") histograms of positive and negative pair values.

    Each value ``v`` in ``[low, low + (num_nodes - 1) * step]`` lies between nodes ``k``
    and ``k + 1``; it adds ``1 - f`` to node ``k`` and ``f`` to node ``k + 1`` where
    ``f = (v - t_k) / step`` (Ustinova & Lempitsky 2016, eq. 2). Both histograms are
    built by ``index_add`` into one vector of ``2 * num_nodes`` bins (the negatives use the
    upper half); values where ``keep`` is False add nothing. Each histogram sums to 1.
    """
    values, is_negative = values.reshape(-1), is_negative.reshape(-1)
    keep = keep.reshape(-1).to(values.dtype)
    position = ((values - low) / step).clamp(0.0, num_nodes - 1.0)
    lower = position.detach().floor().clamp(max=num_nodes - 2)
    upper_weight = position - lower
    index = lower.long() + num_nodes * is_negative.long()
    bins = values.new_zeros(2 * num_nodes)
    bins = bins.index_add(0, index, (1.0 - upper_weight) * keep)
    bins = bins.index_add(0, index + 1, upper_weight * keep)
    positive_hist, negative_hist = bins[:num_nodes], bins[num_nodes:]
    return positive_hist / positive_hist.sum(), negative_hist / negative_hist.sum()


@register("histogram")
class HistogramLoss(torch.nn.Module):
    """Histogram loss (Ustinova & Lempitsky, "Learning Deep Embeddings with Histogram
    Loss", NeurIPS 2016).

    The cosine similarities of all unordered positive pairs and of all unordered negative
    pairs are summarised by soft histograms ``h+`` and ``h-`` on ``R`` nodes
    ``t_r = -1 + (r - 1) * delta`` spanning ``[-1, 1]``. The loss estimates the probability
    that a random negative pair is more similar than a random positive pair::

        L = sum_r h-_r * Phi+_r,   Phi+_r = sum_{q <= r} h+_q

    ``num_bins`` intervals (``delta = 2 / num_bins``, ``num_bins + 1`` nodes). The paper
    reports the loss to be robust to ``delta``; the default 100 bins (``delta = 0.02``) is
    also pytorch-metric-learning's. A batch without positive or without negative pairs
    gives 0. Unlike pytorch-metric-learning, every negative pair is used (PML keeps only
    negative pairs with an anchor that has a positive; identical when no class is a
    singleton) and a similarity of exactly 1 does not index past the last node.
    """

    def __init__(self, num_bins: int = 100) -> None:
        super().__init__()
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        self.num_bins = num_bins
        self.delta = 2.0 / num_bins

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = _prepare(embeddings, labels)
            positive, negative = label_masks(labels)
            # Each unordered pair once: the upper triangle of the B x B matrix.
            upper = torch.ones_like(positive).triu(diagonal=1)
            if not bool((positive & upper).any()) or not bool((negative & upper).any()):
                return _zero_loss(embeddings)
            positive_hist, negative_hist = _pair_histograms(
                x @ x.T, negative, upper, -1.0, self.delta, self.num_bins + 1)
            return (negative_hist * torch.cumsum(positive_hist, dim=0)).sum()


# --------------------------------------------------------------------------------------
# FastAP
# --------------------------------------------------------------------------------------


@register("fastap")
class FastAPLoss(torch.nn.Module):
    """FastAP (Cakir, He, Xia, Kulis & Sclaroff, "Deep Metric Learning to Rank", CVPR 2019).

    For each query the squared Euclidean distances of the L2-normalised embeddings (in
    ``[0, 4]``) to all other items are soft-binned with triangular kernels on ``L + 1``
    nodes ``z_l = l * 4 / L``; ``h+`` / ``h`` are the soft counts of positives / of all
    items, ``H+`` / ``H`` their cumulative sums. Average precision is approximated as::

        FastAP_q = 1 / N+_q * sum_l h+_l * H+_l / H_l,     L_FastAP = 1 - mean_q FastAP_q

    over the queries with at least one positive; ``num_bins = L = 10`` as in the paper.
    Each distance falls between two adjacent nodes, so the histograms are built with two
    ``scatter_add`` over B x B values instead of an (L + 1) x B x B kernel tensor.
    """

    def __init__(self, num_bins: int = 10) -> None:
        super().__init__()
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        self.num_bins = num_bins

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = _prepare(embeddings, labels)
            positive, negative = label_masks(labels)
            num_positives = positive.sum(dim=1)
            has_positive = num_positives > 0
            if not bool(has_positive.any()):
                return _zero_loss(embeddings)
            nodes = self.num_bins + 1
            distance = (2.0 - 2.0 * (x @ x.T)).clamp(0.0, 4.0)
            position = distance * (self.num_bins / 4.0)
            lower = position.detach().floor().clamp(max=self.num_bins - 1)
            upper_weight = position - lower
            # Positives go to bins [0, nodes), negatives to [nodes, 2 nodes); self-pairs
            # get weight 0.
            index = lower.long() + nodes * negative.long()
            keep = (positive | negative).to(x.dtype)
            hist = x.new_zeros(len(labels), 2 * nodes)
            hist = hist.scatter_add(1, index, (1.0 - upper_weight) * keep)
            hist = hist.scatter_add(1, index + 1, upper_weight * keep)
            positive_hist = hist[:, :nodes]
            total_hist = positive_hist + hist[:, nodes:]
            cumulative_positive = torch.cumsum(positive_hist, dim=1)
            cumulative_total = torch.cumsum(total_hist, dim=1)
            defined = cumulative_total > 0
            ratio = torch.where(
                defined,
                positive_hist * cumulative_positive
                / torch.where(defined, cumulative_total, torch.ones_like(cumulative_total)),
                torch.zeros_like(cumulative_total))
            fast_ap = ratio.sum(dim=1) / num_positives.clamp_min(1).to(x.dtype)
            mask = has_positive.to(x.dtype)
            return 1.0 - (fast_ap * mask).sum() / mask.sum()


# --------------------------------------------------------------------------------------
# Ranked list loss
# --------------------------------------------------------------------------------------


@register("ranked_list")
class RankedListLoss(torch.nn.Module):
    """Ranked List Loss, RLL-H (Wang, Hua, Kodirov, Hu, Garnier & Robertson, "Ranked List
    Loss for Deep Metric Learning", CVPR 2019).

    With Euclidean distances ``d`` of L2-normalised embeddings, each query wants its
    positives inside a ball of radius ``alpha - margin`` and its negatives outside radius
    ``alpha``. Only violating (non-trivial) pairs are used: ``P* = {p : d_qp > alpha - m}``,
    ``N* = {n : d_qn < alpha}``::

        L_P(q) = sum_{p in P*} w+_qp (d_qp - (alpha - m)) / sum_{p in P*} w+_qp
        L_N(q) = sum_{n in N*} w_qn (alpha - d_qn) / sum_{n in N*} w_qn,
                 w_qn = exp(T_n (alpha - d_qn))
        L = mean_q [ L_P(q) + lambda * L_N(q) ]

    RLL-H weights the positives uniformly (``positive_temperature = 0``; ``w+ =
    exp(T_p (d - (alpha - m)))`` otherwise). Defaults from the paper: ``alpha = 1.2``,
    ``margin = 0.4``, ``T_n = 10``, ``lambda = 1``. pytorch-metric-learning writes the sum
    as ``(1 - imbalance) L_P + imbalance L_N`` and adds ``1e-5`` per pair to the weight
    sums: ``ours(lambda) = (1 + lambda) * PML(imbalance = lambda / (1 + lambda))`` up to that
    ``1e-5``. The normalised weights are computed as a softmax (no ``exp`` overflow).
    """

    def __init__(self, margin: float = 0.4, alpha: float = 1.2,
                 negative_temperature: float = 10.0, positive_temperature: float = 0.0,
                 negative_weight: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_positive("margin", margin)
        self.alpha = _check_positive("alpha", alpha)
        if alpha - margin < 0:
            raise ValueError(f"alpha ({alpha}) must be >= margin ({margin})")
        if negative_temperature < 0 or positive_temperature < 0:
            raise ValueError(
                f"temperatures must be >= 0, got negative_temperature={negative_temperature}"
                f", positive_temperature={positive_temperature}")
        if negative_weight < 0:
            raise ValueError(f"negative_weight must be >= 0, got {negative_weight}")
        self.negative_temperature = float(negative_temperature)
        self.positive_temperature = float(positive_temperature)
        self.negative_weight = float(negative_weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            check_embeddings_and_labels(embeddings, labels)
            distance = normalized_euclidean_matrix(as_float32(embeddings))
            positive, negative = label_masks(labels)
            positive_boundary = self.alpha - self.margin
            hard_positive = positive & (distance > positive_boundary)
            hard_negative = negative & (distance < self.alpha)
            positive_loss = self._weighted_mean(
                distance - positive_boundary, hard_positive, self.positive_temperature)
            negative_loss = self._weighted_mean(
                self.alpha - distance, hard_negative, self.negative_temperature)
            return (positive_loss + self.negative_weight * negative_loss).mean()

    @staticmethod
    def _weighted_mean(violation: torch.Tensor, mask: torch.Tensor,
                       temperature: float) -> torch.Tensor:
        """Per row: sum of softmax(T * violation) * violation over ``mask``; 0 if empty.

        Entries outside the mask get a huge negative logit (exactly 0 weight, finite
        gradient); an empty row's uniform weights are zeroed by the mask.
        """
        logits = torch.where(mask, temperature * violation,
                             torch.full_like(violation, -1e30))
        weights = torch.softmax(logits, dim=1)
        return (weights * violation * mask.to(violation.dtype)).sum(dim=1)


# --------------------------------------------------------------------------------------
# Smooth-rank machinery shared by smooth_ap, roadmap and recall_at_k
# --------------------------------------------------------------------------------------


def _positive_columns(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of each item's positives (same label, not itself), padded, and validity.

    Returns ``(index, valid)`` of shape (B, P), P the largest class size minus 1:
    ``index[q, a]`` is the ``a``-th positive of item ``q`` where ``valid[q, a]``, some item
    otherwise. Built from one sort of the labels (no B x B temporaries): the positives of
    ``q`` are the other members of its run in the label-sorted order.
    """
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    start = torch.searchsorted(sorted_labels, labels)
    count = torch.searchsorted(sorted_labels, labels, right=True) - start
    position = torch.empty_like(order)
    position[order] = torch.arange(len(labels), device=labels.device)
    width = max(int(count.max()) - 1, 1)
    slot = torch.arange(width, device=labels.device)[None, :]
    slot = slot + (slot >= (position - start)[:, None]).long()  # skip the item itself
    index = order[(start[:, None] + slot).clamp(max=len(labels) - 1)]
    valid = torch.arange(width, device=labels.device)[None, :] < (count - 1)[:, None]
    return index, valid


def _row_masks(row_labels: torch.Tensor, row_ids: torch.Tensor, labels: torch.Tensor,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(other, positive, negative)`` float masks of a chunk of query rows vs all items."""
    other = torch.arange(len(labels), device=labels.device)[None, :] != row_ids[:, None]
    same = labels[None, :] == row_labels[:, None]
    return other.to(dtype), (same & other).to(dtype), (~same).to(dtype)


def _rows_per_chunk(num_positive_columns: int, num_items: int,
                    chunk_size: int | None) -> int:
    if chunk_size is not None:
        return chunk_size
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, num_positive_columns * num_items))


def _chunked_over_rows(function: Callable[..., torch.Tensor], rows_per_chunk: int,
                       row_tensors: Sequence[torch.Tensor],
                       shared: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """``function(*row_chunks, *shared)`` over row chunks of ``row_tensors``, concatenated.

    With more than one chunk, each chunk's intermediates are recomputed in the backward
    pass (``torch.utils.checkpoint``) instead of being kept, so memory stays bounded.
    """
    num_rows = row_tensors[0].shape[0]
    if rows_per_chunk >= num_rows:
        return function(*row_tensors, *shared)
    outputs = []
    for start in range(0, num_rows, rows_per_chunk):
        chunk = [tensor[start:start + rows_per_chunk] for tensor in row_tensors]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*chunk, *shared)):
            outputs.append(checkpoint(function, *chunk, *shared, use_reentrant=False))
        else:
            outputs.append(function(*chunk, *shared))
    return torch.cat(outputs)


def _sigmoid_step(t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``sigmoid(t / tau)`` and its derivative."""
    value = torch.sigmoid(t / temperature)
    return value, value * (1.0 - value) / temperature


class _SoftRankSums(torch.autograd.Function):
    """``out[q, a, k] = sum_j h(s[q, j] - anchor[q, a]) * weight[q, j, k]`` for a step
    surrogate ``h`` (:func:`_sigmoid_step` or :func:`_supap_step`), with a hand-written
    backward.

    Autograd would keep several (rows x P x N) intermediates and run about ten elementwise
    passes over them; here the forward keeps only ``h'`` and the backward is one ``bmm``
    and two reductions: ``dL/dt = (g @ weight^T) * h'``, then ``ds = sum_a dL/dt`` and
    ``danchor = -sum_j dL/dt``. ``weight`` gets no gradient (it is a mask).
    """

    @staticmethod
    def forward(ctx, similarity, anchor, weight, step):  # noqa: D102
        value, derivative = step(similarity[:, None, :] - anchor[:, :, None])
        ctx.save_for_backward(derivative, weight)
        return torch.bmm(value, weight)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        derivative, weight = ctx.saved_tensors
        grad_t = torch.bmm(grad_output, weight.transpose(1, 2)).mul_(derivative)
        return grad_t.sum(dim=1), -grad_t.sum(dim=2), None, None


def _soft_rank_sums(similarity: torch.Tensor, positive_index: torch.Tensor,
                    weight: torch.Tensor,
                    step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                    ) -> torch.Tensor:
    """Weighted sums of ``step(s_qj - s_qp)`` over items ``j`` for each query's positives."""
    anchor = similarity.gather(1, positive_index)
    return _SoftRankSums.apply(similarity, anchor, weight, step)


def _check_chunk_size(chunk_size: int | None) -> int | None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size


def _mean_over_queries(per_query: torch.Tensor, has_positive: torch.Tensor) -> torch.Tensor:
    mask = has_positive.to(per_query.dtype)
    return (per_query * mask).sum() / mask.sum()


# --------------------------------------------------------------------------------------
# Smooth-AP
# --------------------------------------------------------------------------------------


def _smooth_ap_rows(similarity: torch.Tensor, positive_index: torch.Tensor,
                    valid: torch.Tensor, positive: torch.Tensor, candidate: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Smooth AP of a chunk of queries (rows); see :class:`SmoothAPLoss`."""
    counts = _soft_rank_sums(similarity, positive_index,
                             torch.stack((candidate, positive), dim=2),
                             partial(_sigmoid_step, temperature=temperature))
    # Comparing a positive with itself adds sigmoid(0) = 1/2 to both sums: 1 - 1/2.
    rank_all = 0.5 + counts[..., 0]
    rank_positive = 0.5 + counts[..., 1]
    ratio = torch.where(valid, rank_positive / rank_all, torch.zeros_like(rank_all))
    return ratio.sum(dim=1) / valid.sum(dim=1).clamp_min(1).to(ratio.dtype)


@register("smooth_ap")
class SmoothAPLoss(torch.nn.Module):
    """Smooth-AP (Brown, Xie, Kalogeiton & Zisserman, "Smooth-AP: Smoothing the Path Towards
    Large-Scale Image Retrieval", ECCV 2020).

    For a query ``q`` with positives ``P`` among the other items ``Omega`` of the batch,
    cosine similarities ``s`` and ``G(t) = sigmoid(t / tau)``::

        AP_q = 1/|P| sum_{i in P} (1 + sum_{j in P, j != i} G(s_qj - s_qi))
                                 / (1 + sum_{j in Omega, j != i} G(s_qj - s_qi))
        L = 1 - mean_q AP_q           (queries with at least one positive)

    ``tau = 0.01`` as in the paper. Any labels work (no equal class sizes needed). The
    query is not part of its own retrieval set (the paper's definition);
    pytorch-metric-learning 2.9.0, like the authors' code, also ranks the query itself as
    one of its positives, requires equally sized classes ordered by label, and groups the
    positives in runs of ``num_classes`` items (right only when there are as many classes
    as samples per class).
    ``chunk_size`` (queries per chunk, default: automatic) bounds memory; see the module
    docstring.
    """

    def __init__(self, temperature: float = 0.01, chunk_size: int | None = None) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)
        self.chunk_size = _check_chunk_size(chunk_size)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = _prepare(embeddings, labels)
            index, valid = _positive_columns(labels)
            has_positive = valid.any(dim=1)
            if not bool(has_positive.any()):
                return _zero_loss(embeddings)
            rows = _rows_per_chunk(index.shape[1], len(labels), self.chunk_size)
            temperature = self.temperature

            def rows_ap(queries, positive_index, is_valid, row_labels, row_ids, items):
                similarity = queries @ items.T
                other, positive, _ = _row_masks(row_labels, row_ids, labels, similarity.dtype)
                return _smooth_ap_rows(similarity, positive_index, is_valid, positive, other,
                                       temperature)

            ap = _chunked_over_rows(
                rows_ap, rows,
                (x, index, valid, labels, torch.arange(len(labels), device=x.device)), (x,))
            return 1.0 - _mean_over_queries(ap, has_positive)


# --------------------------------------------------------------------------------------
# ROADMAP: SupAP + calibration
# --------------------------------------------------------------------------------------


def supap_negative_step(t: torch.Tensor, temperature: float, slope: float, offset: float,
                        margin: float) -> torch.Tensor:
    """ROADMAP's surrogate ``H-(t)`` of the step function for a negative ranked vs a positive.

    ``sigmoid(t / tau)`` for ``t <= 0``, ``1/2 + sigmoid(t / tau)`` for ``0 < t <= margin``
    and ``slope * t + offset`` beyond: never below the Heaviside step (for ``t > 0`` it is
    ``>= 1`` when ``offset >= 1``), so the rank it gives is an upper bound of the true rank
    and SupAP a lower bound of AP; the linear part keeps a gradient on badly ranked
    negatives where a sigmoid saturates.
    """
    return _supap_step(t, temperature, slope, offset, margin)[0]


def _supap_step(t: torch.Tensor, temperature: float, slope: float, offset: float,
                margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`supap_negative_step` and its derivative."""
    smooth, smooth_derivative = _sigmoid_step(t, temperature)
    linear = t > margin
    value = smooth.add_((t > 0).to(t.dtype), alpha=0.5)
    value = torch.where(linear, t * slope + offset, value)
    return value, smooth_derivative.masked_fill_(linear, slope)


def _supap_rows(similarity: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor,
                negative: torch.Tensor, temperature: float,
                slope: float, offset: float, margin: float) -> torch.Tensor:
    """SupAP of a chunk of queries; see :class:`ROADMAPLoss`."""
    negative_rank = _soft_rank_sums(
        similarity, positive_index, negative[:, :, None],
        partial(_supap_step, temperature=temperature, slope=slope, offset=offset,
                margin=margin)).squeeze(2)
    with torch.no_grad():
        # Exact Heaviside among the positives only (P x P per query, no gradient); the
        # positive itself (t = 0) is counted once, which is the "1 +" of the rank.
        anchor = similarity.gather(1, positive_index)
        above = (anchor[:, None, :] >= anchor[:, :, None]) & valid[:, None, :]
        positive_rank = above.sum(dim=2).to(similarity.dtype)
    ratio = torch.where(valid, positive_rank / (positive_rank + negative_rank),
                        torch.zeros_like(negative_rank))
    return ratio.sum(dim=1) / valid.sum(dim=1).clamp_min(1).to(ratio.dtype)


@register("roadmap")
class ROADMAPLoss(torch.nn.Module):
    """ROADMAP (Ramzi, Thome, Rambour, Audebert & Bitot, "Robust and Decomposable Average
    Precision for Image Retrieval", NeurIPS 2021): ``(1 - lambda) L_SupAP + lambda L_calibr``.

    SupAP ranks each positive ``p`` of a query ``q`` with the exact step function among
    positives and the upper-bounding surrogate ``H-`` (:func:`supap_negative_step`) among
    negatives, on cosine similarities::

        rank+(p) = 1 + sum_{j in P, j != p} H(s_qj - s_qp)
        rank(p)  = rank+(p) + sum_{n in N} H-(s_qn - s_qp)
        L_SupAP  = 1 - mean_q 1/|P| sum_{p in P} rank+(p) / rank(p)

    The calibration loss, which reduces the decomposability gap between batch AP and
    dataset AP, is a contrastive loss on absolute similarities:
    ``mean*_{pos} [alpha - s]_+ + mean*_{neg} [s - beta]_+`` with ``alpha = 0.9``,
    ``beta = 0.6``, each mean taken over the pairs that still violate their margin (as in
    the authors' code, pytorch-metric-learning's ContrastiveLoss on similarities).
    Defaults: ``lambda = 0.5``; ``H-`` parameters of the authors' released configuration
    (``tau = 0.01``, slope ``rho = 100``, offset 1.44, margin 0.05). The query is not part of
    its own retrieval set. ``chunk_size`` bounds memory (see the module docstring).
    """

    def __init__(self, calibration_weight: float = 0.5, temperature: float = 0.01,
                 slope: float = 100.0, offset: float = 1.44, margin: float = 0.05,
                 positive_margin: float = 0.9, negative_margin: float = 0.6,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= calibration_weight <= 1.0:
            raise ValueError(f"calibration_weight must be in [0, 1], got {calibration_weight}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if offset < 1.0:
            raise ValueError(f"offset must be >= 1 so that H- bounds the step function from "
                             f"above, got {offset}")
        self.calibration_weight = float(calibration_weight)
        self.temperature = _check_positive("temperature", temperature)
        self.slope = _check_positive("slope", slope)
        self.offset = float(offset)
        self.margin = float(margin)
        self.positive_margin = float(positive_margin)
        self.negative_margin = float(negative_margin)
        self.chunk_size = _check_chunk_size(chunk_size)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = _prepare(embeddings, labels)
            index, valid = _positive_columns(labels)
            has_positive = valid.any(dim=1)
            if not bool(has_positive.any()):
                return _zero_loss(embeddings)
            rows = _rows_per_chunk(index.shape[1], len(labels), self.chunk_size)
            # One chunk: one similarity matrix serves both terms (one matmul, not two).
            similarity = x @ x.T if rows >= len(labels) or self.calibration_weight > 0 \
                else None
            loss = x.new_zeros(())
            if self.calibration_weight < 1.0:
                supap = self._supap(x, similarity, labels, index, valid, rows)
                loss = loss + (1.0 - self.calibration_weight) * (
                    1.0 - _mean_over_queries(supap, has_positive))
            if self.calibration_weight > 0.0:
                loss = loss + self.calibration_weight * self._calibration(similarity, labels)
            return loss

    def _supap(self, x: torch.Tensor, similarity: torch.Tensor | None, labels: torch.Tensor,
               index: torch.Tensor, valid: torch.Tensor, rows: int) -> torch.Tensor:
        settings = (self.temperature, self.slope, self.offset, self.margin)
        ids = torch.arange(len(labels), device=x.device)
        if rows >= len(labels) and similarity is not None:
            negative = _row_masks(labels, ids, labels, similarity.dtype)[2]
            return _supap_rows(similarity, index, valid, negative, *settings)

        def rows_ap(queries, positive_index, is_valid, row_labels, row_ids, items):
            chunk_similarity = queries @ items.T
            negative = _row_masks(row_labels, row_ids, labels, chunk_similarity.dtype)[2]
            return _supap_rows(chunk_similarity, positive_index, is_valid, negative,
                               *settings)

        return _chunked_over_rows(rows_ap, rows, (x, index, valid, labels, ids), (x,))

    def _calibration(self, similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positive, negative = label_masks(labels)
        positive_part = mean_of_nonzero(F.relu(self.positive_margin - similarity), positive)
        negative_part = mean_of_nonzero(F.relu(similarity - self.negative_margin), negative)
        return positive_part + negative_part


# --------------------------------------------------------------------------------------
# Recall@k surrogate
# --------------------------------------------------------------------------------------


def similarity_mixup(embeddings: torch.Tensor, labels: torch.Tensor,
                     generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """SiMix (Patel et al. 2022): add ``a x_i + (1 - a) x_j`` for every same-class pair.

    ``a ~ U(0, 1)`` per pair; the virtual item has the pair's label. The mixed embeddings
    are not re-normalised, so their dot product with any item is the same mixture of the
    two similarities (the paper's mixing of scalar similarities). Returns the batch with
    the virtual items appended.
    """
    rows, cols = torch.triu_indices(len(labels), len(labels), 1, device=labels.device)
    same = labels[rows] == labels[cols]
    rows, cols = rows[same], cols[same]
    weight = torch.rand(len(rows), 1, generator=generator, device=embeddings.device,
                        dtype=embeddings.dtype)
    mixed = weight * embeddings[rows] + (1.0 - weight) * embeddings[cols]
    return torch.cat((embeddings, mixed)), torch.cat((labels, labels[rows]))


def _recall_rows(similarity: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor,
                 candidate: torch.Tensor, ks: torch.Tensor, k_temperatures: torch.Tensor,
                 rank_temperature: float) -> torch.Tensor:
    """Mean over k of the recall@k surrogate of a chunk of queries."""
    # 1 + sum over the other items, minus sigmoid(0) = 1/2 for the positive itself.
    rank = 0.5 + _soft_rank_sums(similarity, positive_index, candidate[:, :, None],
                                 partial(_sigmoid_step, temperature=rank_temperature)
                                 ).squeeze(2)
    in_top_k = torch.sigmoid((ks - rank[:, :, None]) / k_temperatures)
    hits = torch.where(valid[:, :, None], in_top_k, torch.zeros_like(in_top_k)).sum(dim=1)
    num_positives = valid.sum(dim=1, keepdim=True).to(hits.dtype)
    recall = torch.minimum(hits, ks) / torch.minimum(ks, num_positives).clamp_min(1.0)
    return recall.mean(dim=1)


@register("recall_at_k")
class RecallAtKLoss(torch.nn.Module):
    """Recall@k surrogate, RS@k (Patel, Tolias & Matas, "Recall@k Surrogate Loss with Large
    Batches and Similarity Mixup", CVPR 2022).

    The rank of a positive ``x`` of query ``q`` among the other items ``Omega`` and the
    count of positives in the top ``k`` are both smoothed by sigmoids::

        r(q, x) = 1 + sum_{z in Omega, z != x} sigmoid((s_qz - s_qx) / tau1)
        R@k(q)  = min(sum_{x in P} sigmoid((k - r(q, x)) / tau2_k), k) / min(k, |P|)
        L = 1 - mean_q mean_{k in K} R@k(q)

    Defaults: ``tau1 = 0.01``, ``K = (1, 2, 4, 8, 16)``, ``tau2_k = k`` (the authors'
    training configuration); a ``k`` larger than the gallery (batch size - 1) is capped.
    ``simix=True`` adds SiMix virtual items (:func:`similarity_mixup`), which are queries and
    gallery items like the real ones. The query is not part of its own gallery (the paper's
    definition). Very large batches (the paper trains with 4000) are computed in query
    chunks with checkpointing (``chunk_size`` queries per chunk, automatic by default), so
    memory stays ~ chunk x P x B instead of B x P x B.
    """

    def __init__(self, ks: Sequence[int] = (1, 2, 4, 8, 16),
                 k_temperatures: Sequence[float] | None = None,
                 rank_temperature: float = 0.01, simix: bool = False,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        ks = tuple(ks)
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
        k_temperatures = tuple(float(k) for k in ks) if k_temperatures is None \
            else tuple(k_temperatures)
        if len(k_temperatures) != len(ks) or any(t <= 0 for t in k_temperatures):
            raise ValueError(f"k_temperatures must hold one positive temperature per k "
                             f"({len(ks)}), got {k_temperatures!r}")
        self.ks = ks
        self.k_temperatures = k_temperatures
        self.rank_temperature = _check_positive("rank_temperature", rank_temperature)
        self.simix = bool(simix)
        self.chunk_size = _check_chunk_size(chunk_size)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = _prepare(embeddings, labels)
            if self.simix:
                x, labels = similarity_mixup(x, labels)
            index, valid = _positive_columns(labels)
            has_positive = valid.any(dim=1)
            if not bool(has_positive.any()):
                return _zero_loss(embeddings)
            gallery_size = len(labels) - 1
            ks = x.new_tensor([min(k, gallery_size) for k in self.ks])
            k_temperatures = x.new_tensor(self.k_temperatures)
            rows = _rows_per_chunk(index.shape[1], len(labels), self.chunk_size)
            rank_temperature = self.rank_temperature

            def rows_recall(queries, positive_index, is_valid, row_ids, items):
                similarity = queries @ items.T
                other = torch.arange(len(labels), device=row_ids.device)[None, :] \
                    != row_ids[:, None]
                return _recall_rows(similarity, positive_index, is_valid,
                                    other.to(similarity.dtype), ks, k_temperatures,
                                    rank_temperature)

            recall = _chunked_over_rows(
                rows_recall, rows,
                (x, index, valid, torch.arange(len(labels), device=x.device)), (x,))
            return 1.0 - _mean_over_queries(recall, has_positive)


__all__ = [
    "FastAPLoss",
    "HistogramLoss",
    "ROADMAPLoss",
    "RankedListLoss",
    "RecallAtKLoss",
    "SmoothAPLoss",
    "similarity_mixup",
    "supap_negative_step",
]
