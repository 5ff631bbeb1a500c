"""Numerics shared by the loss families: similarity matrices, label masks, safe reductions.

Every helper works on whole batch matrices (no Python loop over pairs) and is written to be
safe under float16 / bfloat16 autocast and on degenerate batches:

* losses call :func:`as_float32` on the embeddings first, so that exponentials, logs and
  the cancellation in ``|x|^2 + |y|^2 - 2 x.y`` are done in float32 even inside autocast;
* :func:`masked_logsumexp` returns ``-inf`` (with zero gradient) for a row with no element
  instead of NaN, so "no positive pair" contributes 0 after ``softplus`` / ``relu``;
* :func:`safe_sqrt` has gradient 0 (not inf) at 0, so Euclidean distances of identical
  vectors (the diagonal) never poison the backward pass with ``0 * inf = NaN``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_float32(embeddings: torch.Tensor) -> torch.Tensor:
    """``embeddings`` as float32 (float64 kept), outside any autocast down-casting.

    Under CPU/GPU autocast a matmul would otherwise run in bfloat16/float16, whose 8-bit
    (bf16) mantissa makes ``exp(50 * s)`` or ``2 - 2 s`` meaningless.
    """
    if embeddings.dtype == torch.float64:
        return embeddings
    return embeddings.float()


def check_embeddings_and_labels(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise a clear ValueError unless ``embeddings`` is (B, D) and ``labels`` is (B,)."""
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings must be a 2-d tensor (batch, dim), got shape {tuple(embeddings.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be a 1-d tensor with one label per embedding "
            f"({embeddings.shape[0]}), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (rows of zeros stay zero)."""
    return F.normalize(x, p=2, dim=1, eps=eps)


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _SymmetricGram(torch.autograd.Function):
    """``x @ x.T`` whose backward is one matmul, ``(G + G^T) @ x``, instead of two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (grad + grad.T) @ x


def gram_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ y.T`` in at least float32, outside autocast.

    Without ``y`` the product is symmetric and its backward costs one matmul instead of
    two (a third less work for a batch similarity matrix). Autocast is disabled here:
    under bf16 autocast the matmul would otherwise be rounded to 8 mantissa bits before
    any ``exp(gamma * s)``.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = _full_precision(x)
        if y is None:
            return _SymmetricGram.apply(x)
        return x @ _full_precision(y).T


def cosine_similarity_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``S[i, j] = <x_i, y_j> / (|x_i| |y_j|)``: one matmul of the normalised rows."""
    x = l2_normalize(_full_precision(x))
    return gram_matrix(x, None if y is None else l2_normalize(_full_precision(y)))


def squared_euclidean_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``D2[i, j] = |x_i - y_j|^2`` as ``|x_i|^2 + |y_j|^2 - 2 <x_i, y_j>``, clamped at 0.

    The expansion is one fused matmul (``addmm``) instead of a B x B x D difference tensor;
    it runs in at least float32, outside autocast.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = _full_precision(x)
        x_norms = (x * x).sum(dim=1)
        if y is None:
            y, y_norms = x, x_norms
        else:
            y = _full_precision(y)
            y_norms = (y * y).sum(dim=1)
        squared = torch.addmm(x_norms[:, None] + y_norms[None, :], x, y.T, alpha=-2.0)
        return squared.clamp_min(0.0)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with gradient 0 where ``x == 0`` (instead of inf / NaN)."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))),
                       torch.zeros_like(x))


def euclidean_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``D[i, j] = |x_i - y_j|`` with a finite (zero) gradient at coincident points."""
    return safe_sqrt(squared_euclidean_matrix(x, y))


def normalized_euclidean_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distance between L2-normalised rows: ``sqrt(2 - 2 cos)``.

    ``2 - 2 cos`` is clamped below at the smallest normal float before the square root,
    so coincident points get distance ~1e-19 (float32) with zero gradient instead of NaN;
    this costs two element-wise passes instead of :func:`safe_sqrt`'s four.
    """
    cosine = cosine_similarity_matrix(x, y)
    return (2.0 - 2.0 * cosine).clamp_min(torch.finfo(cosine.dtype).tiny).sqrt()


def label_masks(labels: torch.Tensor,
                reference_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(positive, negative)`` masks of the batch pairs.

    ``positive[i, j]``: same label and ``i != j`` (the diagonal is never a pair);
    ``negative[i, j]``: different label. With ``reference_labels`` (a memory bank, a
    second view) the masks are (B, M) and the diagonal is not excluded.
    """
    if reference_labels is None:
        same = labels[:, None] == labels[None, :]
        positive = same.clone()
        positive.fill_diagonal_(False)
        return positive, ~same
    same = labels[:, None] == reference_labels[None, :]
    return same, ~same


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor, dim: int = 1,
                     include_zero: bool = False) -> torch.Tensor:
    """``log(sum_{j in mask} exp(values_j))`` along ``dim``, safe for empty rows.

    With ``include_zero=True`` an extra term ``exp(0) = 1`` is added inside the sum
    (``log(1 + sum exp)``, the soft-plus form used by lifted / multi-similarity / circle
    losses); an empty row then gives exactly 0. Without it an empty row gives ``-inf``
    whose gradient is 0 (callers turn it into a 0 contribution, e.g. with ``softplus``).
    The maximum is subtracted first (detached: its gradient cancels analytically), so
    ``exp`` never overflows even for ``gamma = 256`` scales.
    """
    neg_inf = torch.finfo(values.dtype).min
    masked = torch.where(mask, values, torch.full_like(values, neg_inf))
    if include_zero:
        masked = torch.cat([masked, torch.zeros_like(values.narrow(dim, 0, 1))], dim=dim)
        mask = torch.cat([mask, torch.ones_like(mask.narrow(dim, 0, 1))], dim=dim)
    shift = masked.amax(dim=dim, keepdim=True).detach()
    terms = torch.where(mask, torch.exp(masked - shift), torch.zeros_like(masked))
    total = terms.sum(dim=dim, keepdim=True)
    empty = ~mask.any(dim=dim, keepdim=True)
    safe_total = torch.where(empty, torch.ones_like(total), total)
    result = torch.log(safe_total) + shift
    result = torch.where(empty, torch.full_like(result, -float("inf")), result)
    return result.squeeze(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]`` without indexing (no host sync); 0 when the mask is empty."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def mean_of_nonzero(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the entries that are > 0 (and in ``mask``); 0 with zero gradient if none.

    This is the "average over non-zero losses" reduction of the reality check
    (Musgrave et al. 2020), which pytorch-metric-learning calls ``AvgNonZeroReducer``:
    margin losses are averaged over the pairs / triplets that still violate the margin.
    """
    active = values > 0
    if mask is not None:
        active = active & mask
    return masked_mean(values, active)


__all__ = [
    "as_float32",
    "check_embeddings_and_labels",
    "cosine_similarity_matrix",
    "euclidean_matrix",
    "gram_matrix",
    "l2_normalize",
    "label_masks",
    "masked_logsumexp",
    "masked_mean",
    "mean_of_nonzero",
    "normalized_euclidean_matrix",
    "safe_sqrt",
    "squared_euclidean_matrix",
]
