"""Pair- and triplet-based losses (registered on import).

All losses here L2-normalise the embeddings first and compute in float32 (see
``_common``), use the Euclidean distance ``d = |x_i - x_j| = sqrt(2 - 2 cos)`` of the
normalised embeddings or their cosine similarity ``S`` -- the conventions of the reality
check (Musgrave et al. 2020) and of pytorch-metric-learning -- and reduce with batch
matrices: no Python loop over pairs, triplets or samples. Positive pairs never include an
embedding with itself. A batch with nothing to learn from (no positive pair, no triplet)
gives 0 with zero gradient.

Losses that accept a ``miner`` take a registry name of :mod:`fairdml.losses.miners` or
a miner instance; see that module for the mined-output types.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fairdml.losses import register
from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    cosine_similarity_matrix,
    l2_normalize,
    label_masks,
    masked_logsumexp,
    masked_mean,
    mean_of_nonzero,
    normalized_euclidean_matrix,
)
from fairdml.losses.miners import Pairs, TripletBand, Triplets, resolve, to_pairs


def _prepare(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_embeddings_and_labels(embeddings, labels)
    return as_float32(embeddings), labels.to(embeddings.device)


def _zero(embeddings: torch.Tensor) -> torch.Tensor:
    """A 0 that is connected to the graph (so ``backward`` works and gives zero gradient)."""
    return (embeddings * 0).sum()


class _MinedLoss(torch.nn.Module):
    """Holds an optional miner and turns its output into pair masks on demand."""

    def __init__(self, miner: Any = None) -> None:
        super().__init__()
        self.miner = resolve(miner)

    def mined(self, embeddings: torch.Tensor, labels: torch.Tensor):
        return None if self.miner is None else self.miner(embeddings, labels)

    def pair_masks(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs:
        mined = self.mined(embeddings, labels)
        if mined is None:
            return Pairs(*label_masks(labels))
        return to_pairs(mined, len(labels))


@register("contrastive")
class ContrastiveLoss(_MinedLoss):
    """Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006), reality-check form.

    ``L = mean_{+, >0} [d_ij - m_pos]_+  +  mean_{-, >0} [m_neg - d_ij]_+``

    over positive pairs (same label, i != j) and negative pairs, each term averaged over
    its non-zero entries (Musgrave et al. 2020 "A Metric Learning Reality Check", whose
    hyper-parameters are the two margins). ``d`` is the Euclidean distance of the
    L2-normalised embeddings. Defaults: ``pos_margin`` 0 (Hadsell's pull-to-zero) and
    ``neg_margin`` 1 (Hadsell's m = 1), the same as pytorch-metric-learning. Accepts a
    pair miner (or a triplet miner, whose pairs are used).
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 miner: Any = None) -> None:
        super().__init__(miner)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        pairs = self.pair_masks(x, labels)
        d = normalized_euclidean_matrix(x)
        return _contrastive_terms(d, pairs, self.pos_margin, self.neg_margin)


def _contrastive_terms(d: torch.Tensor, pairs: Pairs, pos_margin: float,
                       neg_margin: float) -> torch.Tensor:
    positive_loss = F.relu(d - pos_margin)
    negative_loss = F.relu(neg_margin - d)
    return (mean_of_nonzero(positive_loss, pairs.positive)
            + mean_of_nonzero(negative_loss, pairs.negative))


@register("snr_contrastive")
class SNRContrastiveLoss(_MinedLoss):
    """Contrastive loss on the signal-to-noise-ratio distance (Yuan et al., CVPR 2019).

    With anchor ``h_i`` as signal and ``h_j - h_i`` as noise,
    ``d_S(i, j) = var(h_j - h_i) / var(h_i)`` (variance over the embedding dimensions,
    unbiased); the loss is the reality-check contrastive form on ``d_S``:
    ``mean_{+,>0} [d_S - m_pos]_+ + mean_{-,>0} [m_neg - d_S]_+`` (defaults 0 and 1 as
    pytorch-metric-learning's ``SignalToNoiseRatioContrastiveLoss``). The paper's optional
    zero-mean regulariser ``lambda * mean_i |sum_k h_ik|`` is ``regularization_weight``
    (default 0, its weight is a searched hyper-parameter). Embeddings are L2-normalised.

    ``d_S`` is computed with one matmul: centring every row makes
    ``var(h_j - h_i) = |c_j - c_i|^2 / (D - 1)`` exactly (``c`` = centred rows), so no
    B x B x D difference tensor is built.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 regularization_weight: float = 0.0, miner: Any = None) -> None:
        super().__init__(miner)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self.regularization_weight = float(regularization_weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        if x.shape[1] < 2:
            raise ValueError("snr_contrastive needs embeddings of at least 2 dimensions "
                             f"(a variance over dimensions), got {x.shape[1]}")
        pairs = self.pair_masks(x, labels)
        x = l2_normalize(x)
        d = snr_distance_matrix(x)
        loss = _contrastive_terms(d, pairs, self.pos_margin, self.neg_margin)
        if self.regularization_weight:
            loss = loss + self.regularization_weight * x.sum(dim=1).abs().mean()
        return loss


def snr_distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = var(x_j - x_i) / var(x_i)`` (unbiased variances over dimensions)."""
    centred = x - x.mean(dim=1, keepdim=True)
    norms = (centred * centred).sum(dim=1)
    squared = torch.addmm(norms[:, None] + norms[None, :], centred, centred.T, alpha=-2.0)
    noise_variance = squared.clamp_min(0.0) / (x.shape[1] - 1)
    signal_variance = (norms / (x.shape[1] - 1)).clamp_min(torch.finfo(x.dtype).tiny)
    return noise_variance / signal_variance[:, None]


@register("triplet")
class TripletLoss(_MinedLoss):
    """Triplet margin loss (Weinberger & Saul, JMLR 2009; Schroff et al., FaceNet, CVPR 2015).

    ``l(a, p, n) = [d(a, p) - d(a, n) + margin]_+``, averaged over the triplets with
    non-zero loss ("batch all, non-zero average", Hermans et al. 2017, which is also the
    reality check's reduction). ``soft=True`` gives the soft-margin variant of Hermans,
    Beyer & Leibe 2017, ``softplus(d(a, p) - d(a, n) + margin)`` averaged over all
    triplets, with margin 0 by default (the paper replaces the hinge and drops the
    margin). ``d`` is the Euclidean distance of L2-normalised embeddings.

    Defaults: margin 0.2 (FaceNet's alpha). Without a miner every valid triplet of the
    batch is used (Weinberger's all target-neighbour / impostor triples, Hermans'
    batch-all); pass ``miner="semihard"`` for FaceNet or ``miner="batch_hard"`` for
    Hermans' batch hard. Accepts Triplets, TripletBand and Pairs (every mined positive of
    an anchor combined with every mined negative of that anchor).

    The hinge loss over a band of triplets is computed without enumerating them: per
    anchor the negative distances are sorted once, and for each positive the active
    negatives ``d(a, n) < d(a, p) + margin`` form a run of sorted positions; the loss is
    then a count-weighted sum of distances (O(B^2 log B) time, O(B^2) memory).
    The soft-plus variant has no such closed form: it visits every (positive pair,
    negative) candidate, in chunks of bounded size.
    """

    def __init__(self, margin: float | None = None, soft: bool = False, miner: Any = None,
                 chunk_elements: int = 1 << 24) -> None:
        super().__init__(miner)
        margin = (0.0 if soft else 0.2) if margin is None else float(margin)
        if not math.isfinite(margin):
            raise ValueError(f"triplet margin must be finite, got {margin}")
        self.margin = margin
        self.soft = bool(soft)
        self.chunk_elements = int(chunk_elements)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        mined = self.mined(x, labels)
        d = normalized_euclidean_matrix(x)
        if isinstance(mined, Triplets):
            d_ap = d[mined.anchor, mined.positive]
            d_an = d[mined.anchor, mined.negative]
            violation = d_ap - d_an + self.margin
            if self.soft:
                return F.softplus(violation).mean() if violation.numel() else _zero(x)
            return mean_of_nonzero(F.relu(violation))
        if mined is None:
            positive, negative = label_masks(labels)
            low, high = -math.inf, math.inf
        elif isinstance(mined, TripletBand):
            positive, negative, low, high = mined.positive, mined.negative, mined.low, mined.high
        elif isinstance(mined, Pairs):
            positive, negative = mined
            low, high = -math.inf, math.inf
        else:
            raise TypeError(f"triplet loss cannot use miner output of type {type(mined)}")
        if self.soft:
            return _soft_triplet_band(d, positive, negative, low, high, self.margin,
                                      self.chunk_elements)
        total, count = _hinge_triplet_band(d, positive, negative, low, high, self.margin)
        return total / count.clamp_min(1)


def _hinge_triplet_band(d: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                        low: float, high: float, margin: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and number of the non-zero ``[d_ap - d_an + margin]_+`` over a triplet band.

    Triplets: ``positive[a, p]``, ``negative[a, n]``, ``low < d_an - d_ap <= high``; the
    hinge is non-zero iff ``d_an < d_ap + margin``. Per anchor, the negatives' distances
    are sorted once (no gradient); each positive's active negatives are then a run
    ``lower <= k < upper`` of sorted positions, found by ``searchsorted``. The sum of the
    active hinges is linear in the distances,
    ``sum_ap c_ap (d_ap + margin) - sum_an c_an d_an``, with integer counts
    ``c_ap`` (active negatives of the pair) and ``c_an`` (positives for which n is active,
    a difference array over the runs), so autograd never goes through the sort.
    """
    batch, columns = d.shape
    with torch.no_grad():
        key, order = torch.where(negative, d, torch.full_like(d, math.inf)).sort(dim=1)
        d_ap = d.detach()
        upper = torch.searchsorted(key, d_ap + margin, right=False)
        if high < math.inf:
            upper = torch.minimum(upper, torch.searchsorted(key, d_ap + high, right=True))
        if low > -math.inf:
            lower = torch.minimum(torch.searchsorted(key, d_ap + low, right=True), upper)
        else:
            lower = torch.zeros_like(upper)
        upper = torch.where(positive, upper, lower)
        count_ap = upper - lower
        runs = torch.zeros(batch, columns + 1, dtype=torch.long, device=d.device)
        ones = positive.long()
        runs.scatter_add_(1, lower, ones).scatter_add_(1, upper, -ones)
        per_sorted_negative = runs.cumsum(dim=1)[:, :columns]
        count_an = torch.zeros_like(count_ap).scatter_(1, order, per_sorted_negative)
        weights = (count_ap - count_an).to(torch.float64)
        count = count_ap.sum()
    total = (weights * d.double()).sum() + margin * count.double()
    return total.to(d.dtype), count


def _soft_triplet_band(d: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                       low: float, high: float, margin: float,
                       chunk_elements: int) -> torch.Tensor:
    """Mean ``softplus(d_ap - d_an + margin)`` over a triplet band.

    One row per positive pair (a, p) holds ``d_an - d_ap`` for every n; rows are processed
    in chunks of at most ``chunk_elements`` entries, so memory stays O(chunk) while only
    the P x B triplet candidates (P = number of positive pairs) are visited.
    """
    anchor, positive_index = torch.nonzero(positive).unbind(1)
    chunk = max(1, chunk_elements // max(1, d.shape[1]))
    total = d.new_zeros(())
    count = d.new_zeros(())
    for start in range(0, len(anchor), chunk):
        rows = anchor[start:start + chunk]
        gap = d[rows] - d[rows, positive_index[start:start + chunk]][:, None]
        valid = negative[rows] & (gap > low) & (gap <= high)
        values = F.softplus(margin - gap)
        total = total + torch.where(valid, values, torch.zeros_like(values)).sum()
        count = count + valid.sum()
    if len(anchor) == 0:
        total = total + d.sum() * 0
    return total / count.clamp_min(1)


@register("lifted_structure")
class LiftedStructureLoss(_MinedLoss):
    """Lifted structured embedding loss (Song, Xiang, Jegelka & Savarese, CVPR 2016, eq. 4).

    For each positive pair (i, j):
    ``J_ij = log( sum_{k in N(i)} exp(m_neg - d_ik) + sum_{l in N(j)} exp(m_neg - d_jl) )
    + d_ij - m_pos`` and ``L = 1/(2|P|) sum_{(i,j) in P} [J_ij]_+^2`` over the unordered
    positive pairs P (equivalently half the mean over ordered pairs). Defaults
    ``neg_margin`` 1 (the paper's alpha), ``pos_margin`` 0. ``d`` is the Euclidean
    distance of L2-normalised embeddings (the paper uses unnormalised features).
    The two sums factor into per-row log-sum-exps, so the loss costs O(B^2).
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0,
                 miner: Any = None) -> None:
        super().__init__(miner)
        self.neg_margin = float(neg_margin)
        self.pos_margin = float(pos_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        pairs = self.pair_masks(x, labels)
        d = normalized_euclidean_matrix(x)
        row_lse = masked_logsumexp(self.neg_margin - d, pairs.negative)
        both = torch.stack(torch.broadcast_tensors(row_lse[:, None], row_lse[None, :]), dim=2)
        pair_lse = masked_logsumexp(both, torch.isfinite(both), dim=2)
        j = pair_lse + d - self.pos_margin
        per_pair = torch.where(pairs.positive, F.relu(j) ** 2, torch.zeros_like(d))
        return 0.5 * masked_mean(per_pair, pairs.positive)


@register("generalized_lifted")
class GeneralizedLiftedStructureLoss(_MinedLoss):
    """Generalised lifted structure loss (Hermans, Beyer & Leibe 2017, eq. 6).

    Per anchor a: ``l_a = [ log sum_{p in P(a)} exp(d_ap - m_pos)
    + log sum_{n in N(a)} exp(m_neg - d_an) ]_+``, averaged over the anchors that have at
    least one positive and one negative. Defaults ``neg_margin`` 1, ``pos_margin`` 0
    (pytorch-metric-learning's; the paper leaves the margin free). pytorch-metric-learning
    instead averages over all B anchors and treats an empty log-sum-exp as 0, so an anchor
    without positives still pays its negative term; here such an anchor has no loss.
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0,
                 miner: Any = None) -> None:
        super().__init__(miner)
        self.neg_margin = float(neg_margin)
        self.pos_margin = float(pos_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        pairs = self.pair_masks(x, labels)
        d = normalized_euclidean_matrix(x)
        positive_lse = masked_logsumexp(d - self.pos_margin, pairs.positive)
        negative_lse = masked_logsumexp(self.neg_margin - d, pairs.negative)
        valid = pairs.positive.any(1) & pairs.negative.any(1)
        per_anchor = F.relu(torch.where(valid, positive_lse + negative_lse,
                                        torch.zeros_like(positive_lse)))
        return masked_mean(per_anchor, valid)


@register("margin")
class MarginLoss(_MinedLoss):
    """Margin-based loss (Wu, Manmatha, Smola & Krahenbuhl, "Sampling Matters", ICCV 2017).

    ``l(i, j) = [alpha + y_ij (d_ij - beta_{c(i)})]_+`` with ``y = +1`` for positive and
    ``-1`` for negative pairs, summed over the pairs and divided by the number of
    non-zero terms (the authors' normalisation), plus ``nu * beta`` (their beta
    regulariser; for per-class beta, the mean over the used anchors' betas).
    ``beta`` is a learnable parameter (initial 1.2), one per class with
    ``per_class_beta=True`` (needs ``num_classes``; labels must be ``0..num_classes-1``).
    Defaults alpha (``margin``) 0.2, beta 1.2, nu 0 and miner ``distance_weighted``: all
    from the paper. ``beta`` trains at ``lr_multiplier`` (default 1000) times the base
    learning rate: the authors' code uses lr 1e-4 for the network and 0.1 for beta.

    With triplets (distance_weighted, batch_hard...) the pairs are each triplet's (a, p)
    and (a, n), duplicates counted, as in the paper's sampling; with pair masks (or no
    miner: all pairs) every pair counts once.
    """

    def __init__(self, margin: float = 0.2, beta: float = 1.2, nu: float = 0.0,
                 learn_beta: bool = True, per_class_beta: bool = False,
                 num_classes: int | None = None, lr_multiplier: float = 1000.0,
                 miner: Any = "distance_weighted") -> None:
        super().__init__(miner)
        if per_class_beta and (num_classes is None or num_classes < 1):
            raise ValueError("margin loss with per_class_beta=True needs num_classes "
                             f"(a positive int), got {num_classes!r}")
        self.margin = float(margin)
        self.nu = float(nu)
        self.per_class_beta = bool(per_class_beta)
        self.num_classes = num_classes
        initial = torch.full((num_classes if per_class_beta else 1,), float(beta))
        self.beta = torch.nn.Parameter(initial, requires_grad=bool(learn_beta))
        self.lr_multiplier = float(lr_multiplier)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        if self.per_class_beta and len(labels) and (
                int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"margin loss with per-class beta needs labels in 0..{self.num_classes - 1}, "
                f"got range {int(labels.min())}..{int(labels.max())}")
        mined = self.mined(x, labels)
        d = normalized_euclidean_matrix(x)
        beta = self.beta.float()
        if isinstance(mined, Triplets):
            anchor_beta = beta[labels[mined.anchor]] if self.per_class_beta else beta[0]
            positive_loss = F.relu(d[mined.anchor, mined.positive] - anchor_beta + self.margin)
            negative_loss = F.relu(anchor_beta - d[mined.anchor, mined.negative] + self.margin)
            total = positive_loss.sum() + negative_loss.sum()
            count = (positive_loss > 0).sum() + (negative_loss > 0).sum()
            used_beta = anchor_beta
        else:
            pairs = Pairs(*label_masks(labels)) if mined is None else to_pairs(mined, len(labels))
            row_beta = (beta[labels] if self.per_class_beta else beta.expand(len(labels)))[:, None]
            positive_loss = torch.where(pairs.positive, F.relu(d - row_beta + self.margin), 0.0)
            negative_loss = torch.where(pairs.negative, F.relu(row_beta - d + self.margin), 0.0)
            total = positive_loss.sum() + negative_loss.sum()
            count = (positive_loss > 0).sum() + (negative_loss > 0).sum()
            used_beta = row_beta[(pairs.positive | pairs.negative).any(1)]
        loss = total / count.clamp_min(1)
        if self.nu and used_beta.numel():
            loss = loss + self.nu * used_beta.mean()
        return loss


@register("multi_similarity")
class MultiSimilarityLoss(_MinedLoss):
    """Multi-similarity loss (Wang, Han, Huang, Dong & Scott, CVPR 2019, eq. 6).

    Per anchor i, on cosine similarities S:
    ``1/alpha log(1 + sum_{p} exp(-alpha (S_ip - lambda)))
    + 1/beta log(1 + sum_{n} exp(beta (S_in - lambda)))``, averaged over the batch.
    Defaults alpha 2, beta 50, base (lambda) 0.5 (REFERENCE.md; the paper writes
    lambda = 1 for SOP/In-Shop and 0.5 in its released code for CUB/Cars), used with the
    ``multi_similarity`` miner (epsilon 0.1) by default, as in the paper. Pass
    ``miner=None`` to use all pairs.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 miner: Any = "multi_similarity") -> None:
        super().__init__(miner)
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"multi_similarity needs alpha > 0 and beta > 0, "
                             f"got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        pairs = self.pair_masks(x, labels)
        s = cosine_similarity_matrix(x)
        positive_term = masked_logsumexp(-self.alpha * (s - self.base), pairs.positive,
                                         include_zero=True) / self.alpha
        negative_term = masked_logsumexp(self.beta * (s - self.base), pairs.negative,
                                         include_zero=True) / self.beta
        return (positive_term + negative_term).mean()


@register("circle")
class CircleLoss(_MinedLoss):
    """Circle loss, pair-wise form (Sun et al., CVPR 2020, eq. 4 and 6).

    On cosine similarities, with ``O_p = 1 + m``, ``O_n = -m``, ``Delta_p = 1 - m``,
    ``Delta_n = m`` and the (non-differentiated) weights ``a_p = [O_p - s_p]_+``,
    ``a_n = [s_n - O_n]_+``, per anchor:
    ``softplus( logsumexp_n gamma a_n (s_n - Delta_n) + logsumexp_p -gamma a_p (s_p - Delta_p) )``
    averaged over the anchors with a non-zero loss (anchors without a positive or a
    negative have none). Defaults m 0.25, gamma 256: the paper's face-recognition setting
    (its fine-grained retrieval setting is m 0.4, gamma 80, pytorch-metric-learning's
    default).
    """

    def __init__(self, m: float = 0.25, gamma: float = 256.0, miner: Any = None) -> None:
        super().__init__(miner)
        self.m = float(m)
        self.gamma = float(gamma)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, labels = _prepare(embeddings, labels)
        pairs = self.pair_masks(x, labels)
        s = cosine_similarity_matrix(x)
        weight_positive = F.relu(1.0 + self.m - s.detach())
        weight_negative = F.relu(s.detach() + self.m)
        positive_logits = -self.gamma * weight_positive * (s - (1.0 - self.m))
        negative_logits = self.gamma * weight_negative * (s - self.m)
        per_anchor = F.softplus(masked_logsumexp(positive_logits, pairs.positive)
                                + masked_logsumexp(negative_logits, pairs.negative))
        return mean_of_nonzero(per_anchor)


__all__ = [
    "CircleLoss",
    "ContrastiveLoss",
    "GeneralizedLiftedStructureLoss",
    "LiftedStructureLoss",
    "MarginLoss",
    "MultiSimilarityLoss",
    "SNRContrastiveLoss",
    "TripletLoss",
    "snr_distance_matrix",
]
