"""Heads: pooling, optional LayerNorm, linear embedding, normalisation.

``Head(features) = normalise(linear(layer_norm(pool(features))))``

Pooling (``pooling_names()``), on a map x of shape (B, C, H, W), per channel over the
H*W positions:

* ``avg``      mean_hw x
* ``max``      max_hw x
* ``avg+max``  mean_hw x + max_hw x (the sum used by Proxy Anchor, Kim et al. CVPR 2020)
* ``gem``      (mean_hw clamp(x, eps)^p)^(1/p), p learnable, initialised at 3 (generalised
  mean; Radenovic, Tolias & Chum, TPAMI 2018). Needs non-negative (post-ReLU) features.
* ``mixed``    a * mean_hw x + (1 - a) * max_hw x with a = sigmoid(w), w learnable,
  initialised at 0 so a = 0.5 (mixed max-average pooling; Lee, Gallagher & Tu, AISTATS 2016)
* ``cls``      the CLS token, for token trunks (ViTs) only.

For token trunks (``output_format == "tokens"``) every pooling but ``cls`` pools the patch
tokens (the CLS / distillation tokens are left out); ``gem`` is refused there because
transformer tokens are signed.

Normalisation (``normalization_names()``) of the linear output phi:

* ``l2``        phi / ||phi||
* ``beta``      phi / ||phi|| + beta * phi, beta a fixed float (beta-normalisation, Group
  Loss++, Elezi et al., TPAMI 2022; beta = 0 is ``l2``)
* ``none``      phi
* ``poincare``  exp_0(clip(phi)) on the Poincare ball of curvature -c: the Euclidean norm is
  first clipped to ``clip_radius`` r, clip(x) = min(1, r / ||x||) x (feature clipping, Guo
  et al. CVPR 2022), then mapped by the exponential map at the origin
  exp_0(x) = tanh(sqrt(c) ||x||) x / (sqrt(c) ||x||) (Ganea et al. NeurIPS 2018), so that
  ||exp_0(x)|| = tanh(sqrt(c) min(||x||, r)) / sqrt(c) < 1 / sqrt(c). Hyp-ViT (Ermolov et
  al. CVPR 2022) uses c = 0.1, r = 2.3. Points are kept at least a float-precision margin
  inside the ball.

Averaging several views (test-time flip averaging) is the normalisation's ``average``:
given the linear outputs phi_k of the views, ``l2`` gives the normalised mean of the unit
vectors phi_k / ||phi_k||; ``beta`` the same plus beta * mean_k phi_k; ``none`` the mean;
``poincare`` maps the mean of the clipped tangent vectors (the views' embeddings pulled
back to the tangent space at the origin) onto the ball.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fairdml.registry import Registry

POOLINGS: Registry = Registry("pooling")
NORMALIZATIONS: Registry = Registry("normalization")
LAYER_NORM_OPTIONS = (False, True, "affine", "no_affine")


def pooling_names() -> list[str]:
    """Names of the registered poolings."""
    return POOLINGS.names()


def normalization_names() -> list[str]:
    """Names of the registered embedding normalisations."""
    return NORMALIZATIONS.names()


# --- pooling: (B, C, H, W) -> (B, C) -------------------------------------------------------

@POOLINGS.register("avg")
class AvgPooling(nn.Module):
    """Global average pooling: mean over positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


@POOLINGS.register("max")
class MaxPooling(nn.Module):
    """Global max pooling: max over positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1))


@POOLINGS.register("avg+max")
class AvgMaxPooling(nn.Module):
    """Sum of global average and global max pooling (Proxy Anchor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1)) + x.amax(dim=(-2, -1))


@POOLINGS.register("gem")
class GeMPooling(nn.Module):
    """Generalised-mean pooling (mean x^p)^(1/p) with learnable p (Radenovic et al. 2018).

    Computed as m * (mean (x/m)^p)^(1/p) with m = max x, which is the same value but does
    not overflow in float32 / bfloat16 when p grows during training.
    """

    requires_non_negative = True

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"GeM pooling needs p > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        x = x.clamp(min=self.eps)
        # Factor out the maximum so that x^p cannot overflow for large p (same value).
        scale = x.detach().amax(dim=(-2, -1), keepdim=True)
        return (x / scale).pow(p).mean(dim=(-2, -1)).pow(1.0 / p) * scale.flatten(-3)


@POOLINGS.register("mixed")
class MixedPooling(nn.Module):
    """sigmoid(w) * avg + (1 - sigmoid(w)) * max with learnable w (Lee et al. 2016)."""

    def __init__(self, mix_logit: float = 0.0) -> None:
        super().__init__()
        self.mix_logit = nn.Parameter(torch.tensor(float(mix_logit)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.mix_logit).to(x.dtype)
        return a * x.mean(dim=(-2, -1)) + (1 - a) * x.amax(dim=(-2, -1))


@POOLINGS.register("cls")
class ClsTokenPooling(nn.Module):
    """The CLS token of a token sequence (B, T, C) -> (B, C); token trunks only."""

    tokens_only = True

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


# --- normalisation: (..., D) -> (..., D); average: (K, B, D) -> (B, D) ----------------------

@NORMALIZATIONS.register("l2")
class L2Normalization(nn.Module):
    """phi / ||phi||_2."""

    def __init__(self) -> None:  # no parameters (the registry passes only accepted ones)
        super().__init__()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1)

    def average(self, views: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(views, dim=-1).mean(dim=0), dim=-1)


@NORMALIZATIONS.register("beta")
class BetaNormalization(nn.Module):
    """phi / ||phi||_2 + beta * phi (Group Loss++, Elezi et al. 2022)."""

    def __init__(self, beta: float = 0.0) -> None:
        super().__init__()
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(
                beta):
            raise ValueError(f"beta must be a finite float, got {beta!r}")
        self.beta = float(beta)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) + self.beta * z

    def average(self, views: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(F.normalize(views, dim=-1).mean(dim=0), dim=-1)
        return unit + self.beta * views.mean(dim=0)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@NORMALIZATIONS.register("none")
class NoNormalization(nn.Module):
    """The linear output unchanged."""

    def __init__(self) -> None:  # no parameters (the registry passes only accepted ones)
        super().__init__()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def average(self, views: torch.Tensor) -> torch.Tensor:
        return views.mean(dim=0)


@NORMALIZATIONS.register("poincare")
class PoincareBallProjection(nn.Module):
    """exp_0(clip_r(phi)) on the Poincare ball of curvature -c (Hyp-ViT, Ermolov et al. 2022)."""

    def __init__(self, curvature: float = 0.1, clip_radius: float | None = 2.3) -> None:
        super().__init__()
        if not (isinstance(curvature, (int, float)) and math.isfinite(curvature)
                and curvature > 0):
            raise ValueError(f"curvature must be a positive float, got {curvature!r}")
        if clip_radius is not None and not (isinstance(clip_radius, (int, float))
                                            and clip_radius > 0):
            raise ValueError(f"clip_radius must be a positive float or None, "
                             f"got {clip_radius!r}")
        self.curvature = float(curvature)
        self.clip_radius = None if clip_radius is None else float(clip_radius)

    def clip(self, z: torch.Tensor) -> torch.Tensor:
        """min(1, r / ||z||) * z."""
        if self.clip_radius is None:
            return z
        norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        return z * (self.clip_radius / norm).clamp(max=1.0)

    def expmap0(self, z: torch.Tensor) -> torch.Tensor:
        """tanh(sqrt(c)||z||) z / (sqrt(c)||z||), kept a margin inside the ball."""
        sqrt_c = math.sqrt(self.curvature)
        norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        ball = torch.tanh(sqrt_c * norm) * z / (sqrt_c * norm)
        margin = 1e-5 if z.dtype == torch.float64 else 4e-3
        max_norm = (1.0 - margin) / sqrt_c
        ball_norm = ball.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        return ball * (max_norm / ball_norm).clamp(max=1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.expmap0(self.clip(z))

    def average(self, views: torch.Tensor) -> torch.Tensor:
        return self.expmap0(self.clip(self.clip(views).mean(dim=0)))

    def extra_repr(self) -> str:
        return f"curvature={self.curvature}, clip_radius={self.clip_radius}"


# --- the head --------------------------------------------------------------------------------

class Head(nn.Module):
    """pool -> optional LayerNorm -> optional linear embedding -> normalisation.

    ``embedding_dim=None`` keeps the pooled features (no linear layer); ``layer_norm`` is
    False, True / "affine" (LayerNorm with learnable scale and shift) or "no_affine"
    (ProxyNCA++). ``input_format`` / ``num_prefix_tokens`` describe the trunk output.
    """

    def __init__(self, feature_dim: int, *, pooling: str = "avg",
                 embedding_dim: int | None = 128, layer_norm: bool | str = False,
                 normalization: str = "l2", beta: float = 0.0, curvature: float = 0.1,
                 clip_radius: float | None = 2.3, input_format: str = "map",
                 num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if embedding_dim is not None and (not isinstance(embedding_dim, int)
                                          or isinstance(embedding_dim, bool)
                                          or embedding_dim < 1):
            raise ValueError(f"embedding_dim must be a positive int, or None for no linear "
                             f"layer (use the pooled {feature_dim}-d features); "
                             f"got {embedding_dim!r}")
        if layer_norm not in LAYER_NORM_OPTIONS or isinstance(layer_norm, int) and not \
                isinstance(layer_norm, bool):
            raise ValueError(f"layer_norm must be one of {LAYER_NORM_OPTIONS}, "
                             f"got {layer_norm!r}")
        if input_format not in ("map", "tokens"):
            raise ValueError(f"input_format must be 'map' or 'tokens', got {input_format!r}")
        if normalization != "beta" and beta != 0:
            raise ValueError(f"beta={beta!r} is only used by normalization='beta', "
                             f"but normalization is {normalization!r}")
        self.pooling = POOLINGS.create(pooling)
        if input_format == "map" and getattr(self.pooling, "tokens_only", False):
            raise ValueError(f"pooling {pooling!r} needs a token trunk (ViT); this trunk "
                             f"gives feature maps; use one of "
                             f"{[n for n in pooling_names() if n != 'cls']}")
        if input_format == "tokens" and getattr(self.pooling, "requires_non_negative", False):
            raise ValueError(f"pooling {pooling!r} needs non-negative features and "
                             f"transformer tokens are signed; use 'cls', 'avg', 'max', "
                             f"'avg+max' or 'mixed'")
        self.pooling_name = pooling
        self.input_format = input_format
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.layer_norm = nn.Identity() if layer_norm is False else nn.LayerNorm(
            feature_dim, elementwise_affine=layer_norm != "no_affine")
        self.linear = nn.Identity() if embedding_dim is None else nn.Linear(feature_dim,
                                                                            embedding_dim)
        self.embedding_dim = feature_dim if embedding_dim is None else embedding_dim
        self.normalization_name = normalization
        self.normalization = NORMALIZATIONS.create(
            normalization, context={"beta": beta, "curvature": curvature,
                                    "clip_radius": clip_radius})

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) map or (B, T, C) tokens -> (B, C)."""
        if self.input_format == "tokens":
            if features.dim() != 3:
                raise ValueError(f"expected tokens (B, T, C), got {tuple(features.shape)}")
            if self.pooling_name == "cls":
                return self.pooling(features)
            patches = features[:, self.num_prefix_tokens:]
            return self.pooling(patches.transpose(1, 2).unsqueeze(-1))
        if features.dim() != 4:
            raise ValueError(f"expected a feature map (B, C, H, W), got {tuple(features.shape)}")
        return self.pooling(features)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding before normalisation: linear(layer_norm(pool(features)))."""
        return self.linear(self.layer_norm(self.pool(features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.project(features))
