"""Classification losses on normalised class weights (the class weights are the proxies).

Registered names: ``normalized_softmax``, ``cosface``, ``arcface``, ``subcenter_arcface``.

All are a cross-entropy over scaled cosine logits ``s * cos(x, w_c)`` between the
L2-normalised embedding and L2-normalised class weights, the weight matrix being the
``proxies`` parameter (``num_classes x embedding_dim``; ``num_classes x K x
embedding_dim`` for sub-centre ArcFace). They differ in the margin applied to the target
logit. Scale ``s`` is ``1 / temperature`` (temperature scaling, a parameter everywhere).
Input checks, float32 maths and ``lr_multiplier`` come from
:class:`fairdml.losses.proxies.ProxyLoss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fairdml.losses import register
from fairdml.losses._common import as_float32
from fairdml.losses.proxies import ProxyLoss, _check_positive

_SIN_SQUARED_FLOOR = 1e-12  # keeps d sqrt(1 - cos^2) / d cos finite at cos = +-1


def _normal_init(std: float):
    return lambda weight: weight.normal_(0.0, std)


def _cosine_scale(scale: float | None, temperature: float | None, loss: str,
                  default_scale: float) -> float:
    """The logit scale from either ``scale`` or ``temperature`` (= 1 / scale)."""
    if scale is not None and temperature is not None:
        raise ValueError(f"{loss}: give either scale or temperature (= 1/scale), not both")
    if temperature is not None:
        return 1.0 / _check_positive(temperature, "temperature", loss)
    return _check_positive(default_scale if scale is None else scale, "scale", loss)


@register("normalized_softmax")
class NormalizedSoftmaxLoss(ProxyLoss):
    r"""Normalized softmax (Zhai & Wu, "Classification is a Strong Baseline for Deep
    Metric Learning", BMVC 2019).

    .. math::
        \ell(x, y) = -\log \frac{e^{\hat x^\top \hat w_y / T}}{\sum_c e^{\hat x^\top \hat w_c / T}}

    with bias-free, L2-normalised class weights ``w_c`` (the proxies) and temperature
    ``T = 0.05`` (the paper's default). The weights are initialised as in the authors'
    code (the default of a bias-free ``nn.Linear``: uniform in ``+-1/sqrt(dim)``). Default
    ``lr_multiplier = 1``: the class weights train at the network's learning rate (no
    separate rate is part of the method; tune it, a larger one acts like ProxyNCA++'s
    fast proxies). Same definition as
    pytorch-metric-learning's ``NormalizedSoftmaxLoss``.
    """

    name = "normalized_softmax"
    min_classes = 2

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 temperature: float = 0.05, lr_multiplier: float = 1.0) -> None:
        bound = 1.0 / math.sqrt(embedding_dim) if isinstance(embedding_dim, int) and \
            embedding_dim > 0 else 1.0
        super().__init__(num_classes, embedding_dim, lr_multiplier=lr_multiplier,
                         init=lambda weight: weight.uniform_(-bound, bound))
        self.temperature = _check_positive(temperature, "temperature", self.name)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.cosines(embeddings) / self.temperature, labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature:g}"


@register("cosface")
class CosFaceLoss(ProxyLoss):
    r"""CosFace / large margin cosine loss (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu,
    "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018).

    .. math::
        \ell(x, y) = -\log \frac{e^{s (\cos\theta_y - m)}}
                               {e^{s (\cos\theta_y - m)} + \sum_{c \neq y} e^{s \cos\theta_c}}

    Defaults from the paper: ``s = 64``, ``m = 0.35``. ``temperature`` may be given
    instead of ``scale`` (``s = 1 / temperature``). Class weights initialised normal with
    std 0.01 (as the insightface code does) and trained at the network's learning rate
    (``lr_multiplier = 1``). Same definition as pytorch-metric-learning's ``CosFaceLoss``.
    """

    name = "cosface"
    min_classes = 2

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 scale: float | None = None, margin: float = 0.35,
                 temperature: float | None = None, lr_multiplier: float = 1.0) -> None:
        super().__init__(num_classes, embedding_dim, lr_multiplier=lr_multiplier,
                         init=_normal_init(0.01))
        self.scale = _cosine_scale(scale, temperature, self.name, 64.0)
        self.margin = float(margin)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(embeddings)
        margins = cos.new_full((len(labels), 1), -self.margin)
        return F.cross_entropy(self.scale * cos.scatter_add(1, labels[:, None], margins), labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}, margin={self.margin:g}"


def additive_angular_margin(cos: torch.Tensor, margin: float) -> torch.Tensor:
    r"""``cos(theta + m)`` from ``cos(theta)``, without ``acos`` (whose gradient is infinite
    at +-1).

    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` with
    ``sin(theta) = sqrt(1 - cos^2)`` (theta in [0, pi]). Where ``theta + m > pi`` the
    target logit would stop decreasing in theta, so there (as in the ArcFace authors'
    code) it is ``cos(theta) - m sin(m)`` instead.
    """
    cos = cos.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(_SIN_SQUARED_FLOOR))
    with_margin = cos * math.cos(margin) - sin * math.sin(margin)
    fallback = cos - margin * math.sin(margin)
    return torch.where(cos >= -math.cos(margin), with_margin, fallback)


class _ArcFaceBase(ProxyLoss):
    min_classes = 2

    def __init__(self, num_classes: int | None, embedding_dim: int | None, *,
                 scale: float | None, margin: float, temperature: float | None,
                 lr_multiplier: float, sub_centers: int | None) -> None:
        super().__init__(num_classes, embedding_dim, lr_multiplier=lr_multiplier,
                         proxies_per_class=sub_centers, init=_normal_init(0.01))
        self.scale = _cosine_scale(scale, temperature, self.name, 64.0)
        if not (isinstance(margin, (int, float)) and 0 <= margin < math.pi / 2):
            raise ValueError(
                f"{self.name}: margin is an angle in radians in [0, pi/2), got {margin!r}"
            )
        self.margin = float(margin)

    def class_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.cosines(embeddings)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.class_cosines(embeddings)
        target = additive_angular_margin(cos.gather(1, labels[:, None]), self.margin)
        return F.cross_entropy(self.scale * cos.scatter(1, labels[:, None], target), labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}, margin={self.margin:g}"


@register("arcface")
class ArcFaceLoss(_ArcFaceBase):
    r"""ArcFace / additive angular margin loss (Deng, Guo, Xue, Zafeiriou, "ArcFace:
    Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019).

    .. math::
        \ell(x, y) = -\log \frac{e^{s \cos(\theta_y + m)}}
                               {e^{s \cos(\theta_y + m)} + \sum_{c \neq y} e^{s \cos\theta_c}}

    with ``theta_c`` the angle between the normalised embedding and class weight. Defaults
    from the paper: ``s = 64``, ``m = 0.5`` (radians). ``cos(theta + m)`` is computed by
    :func:`additive_angular_margin` (no ``acos``; the authors' ``theta + m > pi`` fallback).
    Class weights initialised normal with std 0.01 (insightface code), ``lr_multiplier = 1``.
    Same definition as pytorch-metric-learning's ``ArcFaceLoss``, whose ``margin`` is in
    degrees (28.6 ~ 0.5 rad) and whose ``acos`` gives an infinite gradient at cos = +-1.
    """

    name = "arcface"

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 scale: float | None = None, margin: float = 0.5,
                 temperature: float | None = None, lr_multiplier: float = 1.0) -> None:
        super().__init__(num_classes, embedding_dim, scale=scale, margin=margin,
                         temperature=temperature, lr_multiplier=lr_multiplier,
                         sub_centers=None)


@register("subcenter_arcface")
class SubCenterArcFaceLoss(_ArcFaceBase):
    r"""Sub-center ArcFace (Deng, Guo, Liu, Zafeiriou, "Sub-center ArcFace: Boosting Face
    Recognition by Large-scale Noisy Web Faces", ECCV 2020).

    ``K`` sub-centres per class; the class cosine is the largest over its sub-centres,
    then ArcFace applies:

    .. math::
        \cos\theta_c = \max_k \hat x^\top \hat w_c^k, \qquad
        \ell(x, y) = -\log \frac{e^{s \cos(\theta_y + m)}}
                               {e^{s \cos(\theta_y + m)} + \sum_{c \neq y} e^{s \cos\theta_c}}

    Defaults from the paper: ``K = 3``, ``s = 64``, ``m = 0.5``. ``proxies`` has shape
    ``(num_classes, K, embedding_dim)``; :meth:`dominant_proxies` gives the sub-centre of
    each class that most of the given samples pick (the paper's step for dropping
    non-dominant sub-centres) and :meth:`outliers` the samples it would drop as noisy.
    Same definition as pytorch-metric-learning's
    ``SubCenterArcFaceLoss`` (weights ``dim x C*K`` with column ``c*K + k``).
    """

    name = "subcenter_arcface"

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 sub_centers: int = 3, scale: float | None = None, margin: float = 0.5,
                 temperature: float | None = None, lr_multiplier: float = 1.0) -> None:
        super().__init__(num_classes, embedding_dim, scale=scale, margin=margin,
                         temperature=temperature, lr_multiplier=lr_multiplier,
                         sub_centers=sub_centers)
        self.sub_centers = self.proxies.shape[1]

    def class_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.cosines(embeddings).view(
            -1, self.num_classes, self.sub_centers).amax(dim=2)

    @torch.no_grad()
    def dominant_proxies(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(num_classes, dim) unit sub-centres: per class, the one nearest to most samples.

        Classes without samples keep their sub-centre 0.
        """
        labels = self.check_inputs(embeddings, labels)
        cos = self.cosines(as_float32(embeddings)).view(-1, self.num_classes, self.sub_centers)
        nearest = cos[torch.arange(len(labels), device=labels.device), labels].argmax(dim=1)
        votes = torch.zeros(self.num_classes, self.sub_centers, device=labels.device)
        votes.index_put_((labels, nearest), torch.ones_like(labels, dtype=votes.dtype),
                         accumulate=True)
        winner = votes.argmax(dim=1)
        units = self.unit_proxies(cos.dtype).view(self.num_classes, self.sub_centers, -1)
        return units[torch.arange(self.num_classes, device=labels.device), winner]

    @torch.no_grad()
    def outliers(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 max_angle_degrees: float = 75.0) -> torch.Tensor:
        """Indices of the samples farther than ``max_angle_degrees`` from the dominant
        sub-centre of their class: the paper's noisy-sample filter (75 degrees by default,
        its threshold), to drop before training on the cleaned data.
        """
        if not 0 < max_angle_degrees < 180:
            raise ValueError(
                f"{self.name}: max_angle_degrees must be in (0, 180), got {max_angle_degrees!r}"
            )
        labels = self.check_inputs(embeddings, labels)
        dominant = self.dominant_proxies(embeddings, labels)
        unit = torch.nn.functional.normalize(as_float32(embeddings), dim=1)
        cos = (unit * dominant[labels]).sum(dim=1)
        return torch.nonzero(cos < math.cos(math.radians(max_angle_degrees))).flatten()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sub_centers={self.sub_centers}"


__all__ = [
    "ArcFaceLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "SubCenterArcFaceLoss",
    "additive_angular_margin",
]
