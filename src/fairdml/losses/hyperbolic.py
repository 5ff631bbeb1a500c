"""Hyperbolic metric learning: Poincare-ball geometry and Hyp-ViT's pairwise cross-entropy.

The Poincare ball of curvature ``-c`` is ``{x : c |x|^2 < 1}``. Embeddings reach it through
the exponential map at the origin (done by the model head, or here with ``project=True``);
the loss only needs the geodesic distance, computed for all pairs from one matmul.
"""

from __future__ import annotations

import math

import torch

from fairdml.losses import register
from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    label_masks,
    safe_sqrt,
)

# Points are kept at least this far (relative) inside the boundary, where 1 - c|x|^2
# would otherwise lose all float32 precision.
BOUNDARY_EPS = 1e-5


def _check_curvature(c: float) -> float:
    if not c > 0:
        raise ValueError(f"curvature c must be > 0 (the ball has curvature -c), got {c!r}")
    return float(c)


def check_on_ball(x: torch.Tensor, c: float, name: str = "embeddings") -> None:
    """Raise a ValueError unless every row of ``x`` lies inside the ball ``c |x|^2 < 1``."""
    _check_squared_norms((x.detach() * x.detach()).sum(dim=-1), c, name)


def _check_squared_norms(squared_norms: torch.Tensor, c: float, name: str) -> None:
    c = _check_curvature(c)
    largest = float(squared_norms.detach().max()) if squared_norms.numel() else 0.0
    if not c * largest < 1.0:
        raise ValueError(
            f"{name} are not on the Poincare ball of curvature c={c}: the largest norm is "
            f"{math.sqrt(largest):.6g} but must be < 1/sqrt(c) = {1 / math.sqrt(c):.6g}. "
            f"Map Euclidean features with expmap0 (or pass project=True).")


def _ball_scale(squared_norms: torch.Tensor, c: float, eps: float = BOUNDARY_EPS
                ) -> torch.Tensor:
    """Per-row factor (<= 1) that brings norms above ``(1 - eps) / sqrt(c)`` back to it."""
    max_norm = (1.0 - eps) / math.sqrt(c)
    return (max_norm / squared_norms.clamp_min(1e-30).sqrt()).clamp(max=1.0)


def clamp_to_ball(x: torch.Tensor, c: float, eps: float = BOUNDARY_EPS) -> torch.Tensor:
    """Rows of ``x`` with norm above ``(1 - eps) / sqrt(c)`` scaled back to that norm."""
    c = _check_curvature(c)
    return x * _ball_scale((x * x).sum(dim=-1, keepdim=True), c, eps)


def expmap0(v: torch.Tensor, c: float = 0.1, clip_radius: float | None = 2.3) -> torch.Tensor:
    """Exponential map at the origin of the Poincare ball: ``tanh(sqrt(c)|v|) v / (sqrt(c)|v|)``.

    With ``clip_radius`` the Euclidean features are first clipped to that norm (feature
    clipping, Guo et al. CVPR 2022, used by Hyp-ViT with radius 2.3), which keeps the points
    away from the boundary where gradients vanish. The result is clamped inside the ball.
    All of it is one per-row factor, so ``v`` is multiplied once.
    """
    sqrt_c = math.sqrt(_check_curvature(c))
    norms = (v * v).sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-15)
    clipped = norms
    if clip_radius is not None:
        if not clip_radius > 0:
            raise ValueError(f"clip_radius must be > 0 or None, got {clip_radius!r}")
        clipped = norms.clamp(max=clip_radius)
    ball_norms = torch.tanh(sqrt_c * clipped) / sqrt_c
    factor = ball_norms / norms * _ball_scale(ball_norms * ball_norms, c)
    return v * factor


def poincare_distance(x: torch.Tensor, y: torch.Tensor | None = None,
                      c: float = 0.1) -> torch.Tensor:
    """Geodesic distances ``D[i, j]`` between rows of ``x`` and ``y`` on the Poincare ball.

    ``d(x, y) = arcosh(1 + 2 c |x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))) / sqrt(c)``, equal to
    the Mobius form ``2 / sqrt(c) * artanh(sqrt(c) |(-x) (+)_c y|)``; the arcosh form needs
    only the Gram matrix (one matmul) and the squared norms. Inputs must be on the ball
    (ValueError otherwise); points within ``1e-5`` of the boundary are clamped inside (as a
    per-row factor on the Gram matrix), and the gradient at coincident points is 0, not inf.
    """
    c = _check_curvature(c)
    x_squared = (x * x).sum(dim=-1)
    _check_squared_norms(x_squared, c, "x")
    x_scale = _ball_scale(x_squared, c)
    if y is None:
        y, y_squared, y_scale = x, x_squared, x_scale
    else:
        y_squared = (y * y).sum(dim=-1)
        _check_squared_norms(y_squared, c, "y")
        y_scale = _ball_scale(y_squared, c)
    x_squared = x_squared * x_scale * x_scale
    y_squared = y_squared * y_scale * y_scale
    gram = (x @ y.T) * (x_scale[:, None] * y_scale[None, :])
    squared_distance = (x_squared[:, None] + y_squared[None, :] - 2.0 * gram).clamp_min(0.0)
    z = 2.0 * c * squared_distance / ((1.0 - c * x_squared)[:, None]
                                      * (1.0 - c * y_squared)[None, :])
    # arcosh(1 + z) = log(1 + z + sqrt(z (z + 2))); torch.log is vectorised on CPU where
    # log1p / acosh are not (4x slower), and the absolute error of log(1 + u) for tiny u
    # (coincident points) is ~1e-7, irrelevant next to the distances being compared.
    return torch.log(1.0 + z + safe_sqrt(z * (z + 2.0))) / math.sqrt(c)


@register("hyperbolic_pair_ce")
class HyperbolicPairCELoss(torch.nn.Module):
    """Pairwise cross-entropy on the Poincare ball (Ermolov, Mirvakhabova, Khrulkov, Sebe &
    Oseledets, "Hyperbolic Vision Transformers: Combining Improvements in Metric
    Learning", CVPR 2022).

    Each anchor ``i`` should pick its positives among all other items of the batch, with
    logits the negative geodesic distances over a temperature::

        l_ij = -log( exp(-d(z_i, z_j) / t) / sum_{k != i} exp(-d(z_i, z_k) / t) )
        L = mean_i mean_{j in P(i)} l_ij          (anchors with at least one positive)

    With two samples per class (Hyp-ViT's sampler) this is the paper's loss: each sample's
    other view is its one positive and every other sample a negative. Defaults from the
    paper: curvature ``c = 0.1``, temperature ``t = 0.2``. Embeddings must lie on the ball
    (the model head maps them there); ``project=True`` maps Euclidean inputs with
    :func:`expmap0` (feature clipping at ``clip_radius = 2.3``) first.
    """

    def __init__(self, c: float = 0.1, temperature: float = 0.2, project: bool = False,
                 clip_radius: float | None = 2.3) -> None:
        super().__init__()
        self.c = _check_curvature(c)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.project = bool(project)
        self.clip_radius = clip_radius

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            check_embeddings_and_labels(embeddings, labels)
            z = as_float32(embeddings)
            if self.project:
                z = expmap0(z, self.c, self.clip_radius)
            positive, _ = label_masks(labels)
            has_positive = positive.any(dim=1)
            if not bool(has_positive.any()):
                check_on_ball(z, self.c)
                return embeddings.sum() * 0.0
            logits = -poincare_distance(z, c=self.c) / self.temperature
            # Every row has another item (a positive exists), so each softmax is defined;
            # the -inf self entries are only ever multiplied through ``where``.
            log_probability = torch.log_softmax(logits.fill_diagonal_(-float("inf")), dim=1)
            positive_terms = torch.where(positive, log_probability,
                                         torch.zeros_like(log_probability))
            per_anchor = -positive_terms.sum(dim=1) \
                / positive.sum(dim=1).clamp_min(1).to(z.dtype)
            mask = has_positive.to(z.dtype)
            return (per_anchor * mask).sum() / mask.sum()


__all__ = [
    "HyperbolicPairCELoss",
    "check_on_ball",
    "clamp_to_ball",
    "expmap0",
    "poincare_distance",
]
