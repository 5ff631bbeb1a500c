"""N-tuple losses: a softmax over the batch for every anchor (N-pair, angular, NT-Xent, SupCon).

Each loss here compares an anchor with *all* the other samples of the batch at once, so it
is a handful of matrix operations on the ``B x B`` similarity matrix: no loop over pairs,
no ``B x B x B`` tensor.

Query / reference form. ``angular``, ``ntxent`` and ``supcon`` also accept a reference
set: ``loss(embeddings, labels, ref_embeddings=..., ref_labels=..., ref_self_mask=...)``
compares every query (row of ``embeddings``) with every reference instead of with the
other queries. ``ref_self_mask`` (bool, ``B x R``) marks the (query, reference) pairs that
are the same sample seen twice (its own copy in a memory bank); such a pair is neither a
positive nor a negative. Without references the batch is its own reference set and the
diagonal is the self mask. This is what :mod:`fairdml.losses.memory` (XBM) uses.

All computations run in float32 (``as_float32``) with autocast switched off inside the
loss (:func:`_full_precision`), so under bfloat16 / float16 autocast the value is the
float32 value, not a bfloat16 approximation of it. An anchor without a positive gives no
term; a positive pair without negatives contributes 0 (below ``e^-200``, exactly 0 in
float32) with zero gradient; never NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fairdml.losses import register
from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    l2_normalize,
    masked_mean,
)


def _full_precision(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run a loss's ``forward`` with autocast disabled (its matmuls stay in float32)."""

    @functools.wraps(forward)
    def wrapper(self: torch.nn.Module, embeddings: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return forward(self, embeddings, *args, **kwargs)

    return wrapper


class _Gram(torch.autograd.Function):
    """``x @ x.T`` whose backward is one matmul, ``(G + G^T) x``, instead of autograd's two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (grad + grad.T) @ x


def _zero_like_graph(*tensors: torch.Tensor | None) -> torch.Tensor:
    """A scalar 0 connected to the inputs, so ``backward()`` works and gives zero gradients."""
    total = sum(t.sum() for t in tensors if t is not None)
    return total * 0.0


def _check_temperature(temperature: float, name: str) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"{name}: temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _queries_and_references(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_embeddings: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    ref_self_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """L2-normalised float32 queries and references, the same-label mask and the self mask.

    Returns ``(queries, references, same, self_mask)``: ``references`` is None when the
    batch is its own reference set (then ``self_mask`` is the diagonal); ``same[i, j]``:
    query i and reference j share a label; ``self_mask[i, j]`` (or None): the same sample.
    """
    check_embeddings_and_labels(embeddings, labels)
    queries = l2_normalize(as_float32(embeddings))
    if ref_embeddings is None:
        if ref_labels is not None or ref_self_mask is not None:
            raise ValueError("ref_labels / ref_self_mask given without ref_embeddings")
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return queries, None, same, eye
    if ref_labels is None:
        raise ValueError("ref_embeddings given without ref_labels (one label per reference)")
    check_embeddings_and_labels(ref_embeddings, ref_labels)
    if ref_embeddings.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"ref_embeddings have dimension {ref_embeddings.shape[1]}, "
            f"embeddings have {embeddings.shape[1]}; they must match"
        )
    references = l2_normalize(as_float32(ref_embeddings).to(queries.dtype))
    same = labels[:, None] == ref_labels[None, :]
    if ref_self_mask is not None and (ref_self_mask.shape != same.shape
                                      or ref_self_mask.dtype != torch.bool):
        raise ValueError(
            f"ref_self_mask must be a bool tensor of shape {tuple(same.shape)} "
            f"(queries x references), got {ref_self_mask.dtype} {tuple(ref_self_mask.shape)}"
        )
    return queries, references, same, ref_self_mask


def _positive_pairs(same: torch.Tensor,
                    self_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (query, reference) of the positive pairs: same label, not the same sample."""
    positive = same if self_mask is None else same & ~self_mask
    return torch.nonzero(positive, as_tuple=True)


def _logsumexp_excluding(values: torch.Tensor, excluded: torch.Tensor,
                         bound: float) -> torch.Tensor:
    """Row ``logsumexp`` over the entries not ``excluded``, for ``|values| <= bound``.

    Excluded entries are set to ``-bound - 200``, whose ``exp`` relative to any kept entry
    is below ``e^-200`` (exactly 0 in float32), so the result is the logsumexp of the kept
    entries; a row with no kept entry gives about ``-bound - 200`` (finite, no NaN), which
    callers turn into a 0 contribution through a soft-plus or leave out of their mean.
    One fill and one fused logsumexp: no max / where / exp / log passes of our own.
    """
    return torch.logsumexp(values.masked_fill(excluded, -bound - 200.0), dim=1)


def first_positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One (anchor, positive) pair per class that has at least two samples.

    The anchor is the first sample of the class in batch order, the positive the second,
    pairs ordered by label; classes with a single sample give no pair. This is the
    N-pair batch of Sohn (2016): N pairs from N distinct classes.
    """
    order = torch.argsort(labels, stable=True)
    ordered = labels[order]
    group_start = torch.ones_like(ordered, dtype=torch.bool)
    group_start[1:] = ordered[1:] != ordered[:-1]
    has_second = torch.zeros_like(group_start)
    has_second[:-1] = ordered[1:] == ordered[:-1]
    starts = torch.nonzero(group_start & has_second, as_tuple=True)[0]
    return order[starts], order[starts + 1]


@register("npairs")
class NPairsLoss(torch.nn.Module):
    """Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class
    N-pair Loss Objective", NeurIPS 2016), N-pair-mc form.

    From the batch, one pair (f_i, f_i+) per class with at least two samples
    (:func:`first_positive_pairs`); with N such pairs::

        L = 1/N sum_i log(1 + sum_{j != i} exp(f_i . f_j+  -  f_i . f_i+))
          = mean_i CrossEntropy(logits_i = [f_i . f_j+]_j, target = i)
            + l2_weight * mean_{x in batch} |f(x)|^2

    The similarity is the plain inner product (the paper's; embeddings are *not*
    normalised). Sohn regularises the embedding norms because the inner product is
    unbounded; ``l2_weight`` turns that regulariser on (default 0: with L2-normalised
    embeddings it is a constant; TensorFlow's implementation of the paper uses 0.002).
    Samples of classes with a single sample take no part (the paper's batches have
    none). No pair at all gives 0 with zero gradient.
    """

    def __init__(self, l2_weight: float = 0.0) -> None:
        super().__init__()
        if not (math.isfinite(l2_weight) and l2_weight >= 0):
            raise ValueError(f"npairs: l2_weight must be a finite number >= 0, got {l2_weight!r}")
        self.l2_weight = float(l2_weight)

    @_full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_embeddings_and_labels(embeddings, labels)
        x = as_float32(embeddings)
        anchors, positives = first_positive_pairs(labels)
        if anchors.numel() == 0:
            loss = _zero_like_graph(x)
        else:
            logits = x[anchors] @ x[positives].T
            targets = torch.arange(len(anchors), device=logits.device)
            loss = F.cross_entropy(logits, targets)
        if self.l2_weight:
            loss = loss + self.l2_weight * (x * x).sum(dim=1).mean()
        return loss


@register("angular")
class AngularLoss(torch.nn.Module):
    """Angular loss (Wang, Zhou, Wen, Liu, Lin, "Deep Metric Learning with Angular Loss",
    ICCV 2017), in its N-pair form, on L2-normalised embeddings.

    For every positive pair (a, p) and every negative n of the anchor's class::

        f_apn = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
        L = mean_{(a, p)} log(1 + sum_n exp(f_apn))

    The paper builds N-pair batches (two samples per class, each an anchor once); with
    more samples per class every ordered positive pair is an (a, p), which is the same
    loss on N-pair batches. ``alpha`` in degrees: the paper studies 36-55 degrees and
    finds the best results around 40-45; default 40 (also pytorch-metric-learning's).
    Cost: one ``B x B`` matmul and a (positive pairs) x B gather, never ``B^3``.
    A pair without negatives contributes 0; no positive pair gives 0 with zero gradient.
    """

    def __init__(self, alpha: float = 40.0) -> None:
        super().__init__()
        if not (0 < alpha < 90):
            raise ValueError(f"angular: alpha must be in degrees, in (0, 90), got {alpha!r}")
        self.alpha = float(alpha)
        self._tan_sq = math.tan(math.radians(self.alpha)) ** 2

    @_full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None,
                ref_self_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries, references, same, self_mask = _queries_and_references(
            embeddings, labels, ref_embeddings, ref_labels, ref_self_mask)
        anchor_idx, positive_idx = _positive_pairs(same, self_mask)
        if anchor_idx.numel() == 0:
            return _zero_like_graph(queries, references)
        scale = 4.0 * self._tan_sq
        if references is None:
            similarity = _Gram.apply(queries)
            scaled = similarity * scale
            centre_logits = scaled[anchor_idx] + scaled[positive_idx]
            anchor_dot_positive = similarity[anchor_idx, positive_idx]
            not_negative = same[anchor_idx]
        else:
            anchors, positives = queries[anchor_idx], references[positive_idx]
            centre_logits = ((anchors + positives) * scale) @ references.T
            anchor_dot_positive = (anchors * positives).sum(dim=1)
            not_negative = same if self_mask is None else same | self_mask
            not_negative = not_negative[anchor_idx]
        # log(1 + sum_n exp(f_apn)) = softplus(logsumexp_n(4 t^2 (x_a + x_p).x_n) - c x_a.x_p)
        negatives_lse = _logsumexp_excluding(centre_logits, not_negative, 2.0 * scale)
        return F.softplus(negatives_lse - 2.0 * (1.0 + self._tan_sq) * anchor_dot_positive
                          ).mean()


@register("ntxent")
class NTXentLoss(torch.nn.Module):
    """NT-Xent / InfoNCE with labels (Oord, Li, Vinyals, "Representation Learning with
    Contrastive Predictive Coding", 2018; Chen, Kornblith, Norouzi, Hinton, SimCLR, ICML
    2020), positives = all pairs with the same label.

    With s_ij the cosine similarity and tau the temperature, for every positive pair (i, p)
    against the negatives N(i) (different label)::

        l_ip = -log( exp(s_ip/tau) / (exp(s_ip/tau) + sum_{n in N(i)} exp(s_in/tau)) )
             = softplus( logsumexp_{n in N(i)}(s_in/tau) - s_ip/tau )
        L = mean over positive pairs of l_ip

    so the whole loss is one matmul, one masked row-logsumexp on the ``B x B`` matrix and
    one soft-plus over the positive pairs (pytorch-metric-learning builds a
    (positive pairs) x (negative pairs) matrix instead: ~1.5 s at batch 256, ~12 GB at 1024).
    Default tau = 0.07, the InfoNCE temperature of InstDisc (Wu et al.,
    CVPR 2018) and MoCo (He et al., CVPR 2020), and pytorch-metric-learning's default;
    SupCon (Khosla et al. 2020) uses 0.1. An anchor without negatives contributes 0; no
    positive pair gives 0 with zero gradient.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature, "ntxent")

    @_full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None,
                ref_self_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries, references, same, self_mask = _queries_and_references(
            embeddings, labels, ref_embeddings, ref_labels, ref_self_mask)
        anchor_idx, positive_idx = _positive_pairs(same, self_mask)
        if anchor_idx.numel() == 0:
            return _zero_like_graph(queries, references)
        scale = 1.0 / self.temperature
        logits = (_Gram.apply(queries) * scale if references is None
                  else (queries * scale) @ references.T)
        not_negative = same if self_mask is None or references is None else same | self_mask
        negatives_lse = _logsumexp_excluding(logits, not_negative, scale)
        per_pair = F.softplus(negatives_lse[anchor_idx] - logits[anchor_idx, positive_idx])
        return per_pair.mean()


@register("supcon")
class SupConLoss(torch.nn.Module):
    """Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning",
    NeurIPS 2020), the L_out form (their Eq. 2), which the paper finds better than L_in.

    With s_ij the cosine similarity, A(i) all samples but i, P(i) the positives of i::

        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/tau) / sum_{a in A(i)} exp(s_ia/tau) )
        L = mean of l_i over the anchors with |P(i)| > 0

    Default tau = 0.1 (the paper's choice for its results). Anchors without a positive
    are left out of the mean (the paper's 1/|P(i)| is undefined for them); no positive in
    the batch gives 0 with zero gradient. pytorch-metric-learning returns 0 for a batch
    of one class; this follows the formula, which is defined (and non-zero) there.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature, "supcon")

    @_full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None,
                ref_self_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries, references, same, self_mask = _queries_and_references(
            embeddings, labels, ref_embeddings, ref_labels, ref_self_mask)
        scale = 1.0 / self.temperature
        scaled = queries * scale
        if references is None:
            logits = _Gram.apply(queries) * scale
            denominator = _logsumexp_excluding(logits, self_mask, scale)
            # sum_{p in P(i)} s_ip = x_i . (sum of x over i's class - x_i): no B x B mask.
            _, class_of, class_size = torch.unique(labels, return_inverse=True,
                                                   return_counts=True)
            class_sums = torch.zeros(len(class_size), queries.shape[1], dtype=queries.dtype,
                                     device=queries.device).index_add(0, class_of, queries)
            positive_count = class_size[class_of] - 1
            positive_logit_sum = (scaled * (class_sums[class_of] - queries)).sum(dim=1)
        else:
            logits = scaled @ references.T
            positive = same if self_mask is None else same & ~self_mask
            denominator = (torch.logsumexp(logits, dim=1) if self_mask is None
                           else _logsumexp_excluding(logits, self_mask, scale))
            positive_count = positive.sum(dim=1)
            positive_logit_sum = torch.where(positive, logits, torch.zeros_like(logits)).sum(1)
        per_anchor = denominator - positive_logit_sum / positive_count.clamp_min(1)
        return masked_mean(per_anchor, positive_count > 0)


__all__ = ["AngularLoss", "NPairsLoss", "NTXentLoss", "SupConLoss", "first_positive_pairs"]
