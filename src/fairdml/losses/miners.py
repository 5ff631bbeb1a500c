"""Miners: choose the informative pairs or triplets of a batch.

A miner is a callable ``miner(embeddings, labels)``; losses that accept one take it as
their ``miner`` constructor parameter. ``create(name, **params)`` and ``names()`` work as
for losses. Miners run without gradient (they only select) and in float32.

Miner outputs (chosen for speed of the consuming loss, see each type):

* :class:`Pairs` -- boolean (B, B) masks of the mined positive and negative pairs. Masks
  beat index lists for pair losses: the loss is one masked reduction of the distance
  matrix, with no gather and no host synchronisation.
* :class:`Triplets` -- index tensors ``(anchor, positive, negative)`` of equal length, for
  miners that pick a few triplets (batch_hard: one per anchor; semihard and
  distance_weighted: one negative per positive pair).
* :class:`TripletBand` -- the set of all triplets ``(a, p, n)`` with ``positive[a, p]``,
  ``negative[a, n]`` and ``low < d(a, n) - d(a, p) <= high``. This is what
  ``triplet_margin`` selects. Storing the rule instead of the triplets keeps memory at
  B x B (the explicit list is up to B^3 long); the triplet loss sums over the band by
  sorting each anchor's negative distances (O(B^2 log B) instead of O(B^3)).

Losses accept any compatible output: triplet losses take all three (pair masks are turned
into the band of all mined-positive x mined-negative triplets per anchor); pair losses turn
triplets into the masks of their anchor-positive and anchor-negative pairs (see
:func:`to_pairs`; duplicate pairs count once).

All triplet / pair miners measure the Euclidean distance of L2-normalised embeddings (the
convention of the reality check and of pytorch-metric-learning), except
``multi_similarity``, which uses cosine similarity as in its paper.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    cosine_similarity_matrix,
    label_masks,
    normalized_euclidean_matrix,
)
from fairdml.registry import Registry

MINERS: Registry = Registry("miner")
register = MINERS.register


class Pairs(NamedTuple):
    """Mined pairs as boolean (B, B) masks; ``positive`` never contains the diagonal."""

    positive: torch.Tensor
    negative: torch.Tensor


class Triplets(NamedTuple):
    """Mined triplets as index tensors: triplet t is ``(anchor[t], positive[t], negative[t])``."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


class TripletBand(NamedTuple):
    """All triplets with ``positive[a, p] & negative[a, n] & low < d[a,n] - d[a,p] <= high``.

    ``distances`` is the (detached) normalised-Euclidean matrix the miner used, so that the
    band can be turned into pairs without recomputation.
    """

    positive: torch.Tensor
    negative: torch.Tensor
    low: float
    high: float
    distances: torch.Tensor


def names() -> list[str]:
    """Names of all registered miners."""
    return MINERS.names()


def create(name: str, **params: Any) -> Any:
    """Build miner ``name`` with its parameters."""
    return MINERS.create(name, **params)


def resolve(miner: Any) -> Any:
    """A miner instance from a registry name, an instance, or None (no mining)."""
    if miner is None or callable(miner):
        return miner
    if isinstance(miner, str):
        return create(miner)
    raise TypeError(f"miner must be a registry name, a callable miner or None, got {miner!r}")


def to_pairs(mined: Pairs | Triplets | TripletBand, batch_size: int) -> Pairs:
    """Positive / negative pair masks of any miner output (duplicates count once)."""
    if isinstance(mined, Pairs):
        return mined
    if isinstance(mined, Triplets):
        positive = torch.zeros(batch_size, batch_size, dtype=torch.bool,
                               device=mined.anchor.device)
        negative = torch.zeros_like(positive)
        positive[mined.anchor, mined.positive] = True
        negative[mined.anchor, mined.negative] = True
        return Pairs(positive, negative)
    if isinstance(mined, TripletBand):
        return _band_to_pairs(mined)
    raise TypeError(f"expected Pairs, Triplets or TripletBand from the miner, got {type(mined)}")


def _band_to_pairs(band: TripletBand) -> Pairs:
    """Pairs that take part in at least one triplet of the band (by per-anchor sorting)."""
    d = band.distances
    inf = torch.full_like(d, float("inf"))
    negatives_sorted = torch.where(band.negative, d, inf).sort(dim=1).values
    positives_sorted = torch.where(band.positive, d, inf).sort(dim=1).values
    # (a, p) is used iff some negative has d_an in (d_ap + low, d_ap + high].
    above_low = torch.searchsorted(negatives_sorted, d + band.low, right=True)
    up_to_high = torch.searchsorted(negatives_sorted, d + band.high, right=True)
    up_to_high = torch.minimum(up_to_high, band.negative.sum(1, keepdim=True))
    positive = band.positive & (up_to_high > above_low)
    # (a, n) is used iff some positive has d_ap in [d_an - high, d_an - low).
    from_high = torch.searchsorted(positives_sorted, d - band.high, right=False)
    below_low = torch.searchsorted(positives_sorted, d - band.low, right=False)
    below_low = torch.minimum(below_low, band.positive.sum(1, keepdim=True))
    negative = band.negative & (below_low > from_high)
    return Pairs(positive, negative)


def _prepare(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_embeddings_and_labels(embeddings, labels)
    return as_float32(embeddings.detach()), labels.to(embeddings.device)


class Miner(torch.nn.Module):
    """Base class: mining never builds a graph; subclasses implement :meth:`mine`."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        embeddings, labels = _prepare(embeddings, labels)
        with torch.no_grad():
            return self.mine(embeddings, labels)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor):
        raise NotImplementedError


@register("batch_hard")
class BatchHardMiner(Miner):
    """Batch-hard mining (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    For every anchor with at least one positive and one negative: the farthest positive
    ``argmax_p d(a, p)`` and the closest negative ``argmin_n d(a, n)``; one triplet per
    anchor. Same selection as pytorch-metric-learning's ``BatchHardMiner``.
    """

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        d = normalized_euclidean_matrix(embeddings)
        positive, negative = label_masks(labels)
        hardest_positive = torch.where(positive, d, torch.full_like(d, -1.0)).argmax(dim=1)
        hardest_negative = torch.where(negative, d, torch.full_like(d, float("inf"))).argmin(dim=1)
        anchor = torch.nonzero(positive.any(1) & negative.any(1)).squeeze(1)
        return Triplets(anchor, hardest_positive[anchor], hardest_negative[anchor])


@register("semihard")
class SemihardMiner(Miner):
    """FaceNet semi-hard negatives (Schroff, Kalenichenko & Philbin, CVPR 2015).

    For every positive pair (a, p) the semi-hard negative is the closest negative that is
    farther than the positive, ``argmin {d(a, n) : d(a, n) > d(a, p)}`` (FaceNet section
    3.2: "negatives that are further away from the anchor than the positive"). When an
    anchor has no such negative (all negatives closer than p) the farthest negative is
    used instead, as in the TensorFlow reference ``triplet_semihard_loss``. Output: one
    triplet per positive pair; anchors without negatives yield none.

    Unlike ``triplet_margin(type_of_triplets="semihard")`` (every negative inside the
    margin band, the pytorch-metric-learning convention), this is one negative per pair.
    """

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        d = normalized_euclidean_matrix(embeddings)
        positive, negative = label_masks(labels)
        negatives_sorted, order = torch.where(
            negative, d, torch.full_like(d, float("inf"))).sort(dim=1)
        negative_count = negative.sum(1, keepdim=True)
        first_farther = torch.searchsorted(negatives_sorted, d, right=True)
        choice = torch.where(first_farther < negative_count, first_farther, negative_count - 1)
        anchor, positive_index = torch.nonzero(positive & (negative_count > 0)).unbind(1)
        negative_index = order[anchor, choice[anchor, positive_index]]
        return Triplets(anchor, positive_index, negative_index)


_TRIPLET_TYPES = {
    "all": (-math.inf, None),        # d_an - d_ap <= margin
    "hard": (-math.inf, 0.0),        # d_an - d_ap <= 0
    "semihard": (0.0, None),         # 0 < d_an - d_ap <= margin
    "easy": (None, math.inf),        # d_an - d_ap > margin
}


@register("triplet_margin")
class TripletMarginMiner(Miner):
    """Triplets by how much they violate a margin (pytorch-metric-learning's definitions).

    With ``m(a, p, n) = d(a, n) - d(a, p)``: ``all`` keeps ``m <= margin``, ``hard``
    ``m <= 0``, ``semihard`` ``0 < m <= margin``, ``easy`` ``m > margin``.
    Returns a :class:`TripletBand` (the rule, not a B^3 list). Default margin 0.2
    (FaceNet's alpha).
    """

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all") -> None:
        super().__init__()
        if type_of_triplets not in _TRIPLET_TYPES:
            raise ValueError(f"type_of_triplets must be one of {sorted(_TRIPLET_TYPES)}, "
                             f"got {type_of_triplets!r}")
        if not math.isfinite(margin):
            raise ValueError(f"margin must be finite, got {margin}")
        self.margin = float(margin)
        self.type_of_triplets = type_of_triplets
        low, high = _TRIPLET_TYPES[type_of_triplets]
        self.low = self.margin if low is None else low
        self.high = self.margin if high is None else high

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> TripletBand:
        d = normalized_euclidean_matrix(embeddings)
        positive, negative = label_masks(labels)
        return TripletBand(positive, negative, self.low, self.high, d)


@register("distance_weighted")
class DistanceWeightedMiner(Miner):
    """Distance-weighted negative sampling (Wu, Manmatha, Smola & Krahenbuhl, ICCV 2017).

    On the unit sphere in n dimensions pair distances follow
    ``q(d) ~ d^(n-2) (1 - d^2/4)^((n-3)/2)``; negatives are drawn with probability
    ``~ 1 / q(max(d, cutoff))`` (uniform in distance), restricted to negatives with
    ``d < nonzero_loss_cutoff`` (farther ones give the margin loss no gradient). Defaults
    cutoff 0.5 and nonzero_loss_cutoff 1.4 are the paper's. For every positive pair
    (a, p) one negative is drawn for a, giving triplets (a, p, n). An anchor whose
    negatives all lie beyond the cutoff draws uniformly among its negatives.

    Sampling uses ``generator`` when given, else torch's global generator, so runs are
    reproducible under ``torch.manual_seed``.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError(f"need 0 < cutoff < nonzero_loss_cutoff, got cutoff={cutoff}, "
                             f"nonzero_loss_cutoff={nonzero_loss_cutoff}")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.generator = generator

    def negative_weights(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Unnormalised sampling weight of each (anchor, negative) pair (0 elsewhere)."""
        dim = embeddings.shape[1]
        d = normalized_euclidean_matrix(embeddings).double()
        _, negative = label_masks(labels)
        clamped = d.clamp(min=self.cutoff, max=2.0 - 1e-6)
        log_q = (dim - 2.0) * torch.log(clamped) + (dim - 3.0) / 2.0 * torch.log(
            1.0 - 0.25 * clamped * clamped)
        allowed = negative & (d < self.nonzero_loss_cutoff)
        log_w = torch.where(allowed, -log_q, torch.full_like(d, -math.inf))
        row_max = log_w.amax(dim=1, keepdim=True)
        weights = torch.exp(log_w - torch.where(torch.isfinite(row_max), row_max, 0.0))
        fallback = negative & ~allowed.any(dim=1, keepdim=True)
        return torch.where(fallback, torch.ones_like(weights), weights)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        weights = self.negative_weights(embeddings, labels)
        positive, _ = label_masks(labels)
        usable = positive & (weights.sum(dim=1, keepdim=True) > 0)
        anchor, positive_index = torch.nonzero(usable).unbind(1)
        if anchor.numel() == 0:
            return Triplets(anchor, positive_index, positive_index.clone())
        rows = torch.unique(anchor)
        batch = len(labels)
        draws = torch.zeros(batch, batch, dtype=torch.long, device=labels.device)
        draws[rows] = torch.multinomial(weights[rows].float(), batch, replacement=True,
                                        generator=self.generator)
        return Triplets(anchor, positive_index, draws[anchor, positive_index])


@register("multi_similarity")
class MultiSimilarityMiner(Miner):
    """Multi-similarity pair mining (Wang et al., CVPR 2019, eq. 7-8), on cosine similarity.

    A negative pair is kept when ``S_an > min_p S_ap - epsilon``; a positive pair when
    ``S_ap < max_n S_an + epsilon``. Default ``epsilon`` 0.1 (paper). Returns :class:`Pairs`.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = float(epsilon)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs:
        s = cosine_similarity_matrix(embeddings)
        positive, negative = label_masks(labels)
        hardest_positive = torch.where(positive, s, torch.full_like(s, math.inf)).amin(1)
        hardest_negative = torch.where(negative, s, torch.full_like(s, -math.inf)).amax(1)
        keep_negative = negative & (s + self.epsilon > hardest_positive[:, None])
        keep_positive = positive & (s - self.epsilon < hardest_negative[:, None])
        return Pairs(keep_positive, keep_negative)


@register("pair_margin")
class PairMarginMiner(Miner):
    """Pairs that violate a distance margin: positives with ``d > pos_margin`` and
    negatives with ``d < neg_margin`` (normalised Euclidean distance; defaults 0.2 / 0.8
    as pytorch-metric-learning's ``PairMarginMiner``). Returns :class:`Pairs`.
    """

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8) -> None:
        super().__init__()
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs:
        d = normalized_euclidean_matrix(embeddings)
        positive, negative = label_masks(labels)
        return Pairs(positive & (d > self.pos_margin), negative & (d < self.neg_margin))


__all__ = [
    "MINERS",
    "Miner",
    "Pairs",
    "TripletBand",
    "Triplets",
    "create",
    "names",
    "register",
    "resolve",
    "to_pairs",
]
