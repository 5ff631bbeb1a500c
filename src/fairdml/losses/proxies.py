"""Proxy-based losses: each class is represented by learnable proxies (or centres).

Registered names: ``proxy_anchor``, ``proxy_nca``, ``proxy_nca_pp``, ``soft_triple``.

Every loss here (and in :mod:`fairdml.losses.classification`, which builds on
:class:`ProxyLoss`) shares one contract:

* constructed with ``num_classes`` and ``embedding_dim`` (the trainer passes them through
  :func:`fairdml.losses.create`); labels are class indices ``0..num_classes-1`` and a
  label outside that range is a ``ValueError`` naming the label;
* the learnable proxies are the parameter ``proxies`` (``num_classes x embedding_dim``, or
  ``num_classes x K x embedding_dim`` for the multi-centre losses) and the attribute
  ``lr_multiplier`` is the ratio of their learning rate to the network's in the paper's
  recipe;
* the loss is computed in float32 with autocast switched off, so a bfloat16 / float16
  training step gets the same loss as a float32 one up to the embeddings' rounding;
* the cosine matrix, the Proxy Anchor terms and SoftTriple's soft maximum have
  hand-written backward passes (fewer passes over memory than autograd's); they are
  first-order only: a double backward (``create_graph=True``) raises instead of
  returning a wrong second derivative.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fairdml.losses import register
from fairdml.losses._common import as_float32, check_embeddings_and_labels, l2_normalize

_SOFT_TRIPLE_SQRT_EPS = 1e-5  # inside sqrt(2 - 2 w.w'), from the SoftTriple authors' code


class ProxyLoss(torch.nn.Module):
    """Base of the proxy and classification losses: proxies, input checks, float32 maths.

    Subclasses implement :meth:`compute` on float32 embeddings and validated labels; the
    public ``forward(embeddings, labels)`` checks the inputs and switches autocast off.
    """

    name = "proxy loss"
    min_classes = 1

    def __init__(self, num_classes: int | None, embedding_dim: int | None, *,
                 lr_multiplier: float, proxies_per_class: int | None = None,
                 init: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.num_classes = _positive_int(num_classes, "num_classes", self.name,
                                         "the number of training classes")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim", self.name,
                                           "the size of the embeddings")
        if self.num_classes < self.min_classes:
            raise ValueError(
                f"{self.name} needs num_classes >= {self.min_classes}, got {self.num_classes}"
            )
        if not (isinstance(lr_multiplier, (int, float)) and lr_multiplier > 0
                and math.isfinite(lr_multiplier)):
            raise ValueError(
                f"{self.name}: lr_multiplier must be a positive number, got {lr_multiplier!r}"
            )
        self.lr_multiplier = float(lr_multiplier)
        shape: tuple[int, ...] = (self.num_classes, self.embedding_dim)
        if proxies_per_class is not None:
            proxies_per_class = _positive_int(proxies_per_class, "centres per class",
                                              self.name, "K, the proxies per class")
            shape = (self.num_classes, proxies_per_class, self.embedding_dim)
        self.proxies = torch.nn.Parameter(torch.empty(shape))
        with torch.no_grad():
            init(self.proxies)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = self.check_inputs(embeddings, labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(as_float32(embeddings), labels)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Validate shapes and label range; return labels as int64 on the embeddings' device."""
        labels = torch.as_tensor(labels, device=embeddings.device)
        check_embeddings_and_labels(embeddings, labels)
        if embeddings.shape[0] == 0:
            raise ValueError(f"{self.name}: the batch is empty (0 embeddings)")
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{self.name} was built with embedding_dim={self.embedding_dim}, "
                f"got embeddings of dimension {embeddings.shape[1]}"
            )
        labels = labels.long()
        out_of_range = (labels < 0) | (labels >= self.num_classes)
        if bool(out_of_range.any()):
            bad = labels[out_of_range][0].item()
            raise ValueError(
                f"{self.name}: label {bad} is outside 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes}); labels must be contiguous class indices"
            )
        return labels

    def unit_proxies(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The proxies L2-normalised along the embedding axis, as (rows, dim) of ``dtype``."""
        return l2_normalize(self.proxies.to(dtype).reshape(-1, self.embedding_dim))

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each proxy row: (B, proxies rows)."""
        proxies = self.proxies.to(embeddings.dtype).reshape(-1, self.embedding_dim)
        return cosine_matrix(embeddings, proxies)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
                f"lr_multiplier={self.lr_multiplier:g}")


class _CosineMatrix(torch.autograd.Function):
    """``normalize(x) @ normalize(p).T`` with a hand-written backward.

    The backward projects the incoming gradient onto the tangent space of each unit row,
    ``dL/dx = (g - x_hat <g, x_hat>) / |x|`` with ``g = dL/dx_hat``: three passes over
    each input instead of the eight or so that autograd spends on ``F.normalize``.
    With ``p_is_unit`` the rows of ``p`` are taken as already unit-norm (normalised by the
    caller, who needs them for something else too) and get the plain matmul gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: torch.Tensor, p_is_unit: bool) -> torch.Tensor:
        x_norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(_NORM_EPS)
        x_unit = x / x_norm
        if p_is_unit:
            p_unit, p_norm = p, None
        else:
            p_norm = torch.linalg.vector_norm(p, dim=1, keepdim=True).clamp_min(_NORM_EPS)
            p_unit = p / p_norm
        ctx.save_for_backward(x_unit, p_unit, x_norm, p_norm)
        return x_unit @ p_unit.T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x_unit, p_unit, x_norm, p_norm = ctx.saved_tensors
        grad_x = grad_p = None
        if ctx.needs_input_grad[0]:
            grad_x = _tangent(grad @ p_unit, x_unit, x_norm)
        if ctx.needs_input_grad[1]:
            grad_p = grad.T @ x_unit
            if p_norm is not None:
                grad_p = _tangent(grad_p, p_unit, p_norm)
        return grad_x, grad_p, None


_NORM_EPS = 1e-12  # as F.normalize


def _tangent(grad_unit: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``v`` from the gradient w.r.t. ``v / |v|``."""
    radial = torch.linalg.vecdot(grad_unit, unit, dim=1).unsqueeze(1)
    return torch.addcmul(grad_unit, unit, radial, value=-1.0).div_(norm)


def cosine_matrix(x: torch.Tensor, p: torch.Tensor, *, p_is_unit: bool = False
                  ) -> torch.Tensor:
    """(B, R) cosine similarities between the rows of ``x`` (B, D) and ``p`` (R, D).

    ``p_is_unit=True``: the rows of ``p`` are unit vectors already (not re-normalised).
    """
    return _CosineMatrix.apply(x, p, p_is_unit)


class _SoftMaxPooling(torch.autograd.Function):
    """``S = sum_k softmax_k(s / gamma) s_k`` over dim 1 of a (B, K, C) tensor.

    The gradient ``dS/ds_k = w_k (1 + (s_k - S) / gamma)`` is applied in one fused pass;
    with K on dim 1 the softmax runs vectorised over the contiguous class axis.
    """

    @staticmethod
    def forward(ctx, similarity: torch.Tensor, inverse_gamma: float) -> torch.Tensor:
        weights = torch.softmax(similarity * inverse_gamma, dim=1)
        pooled = (weights * similarity).sum(dim=1)
        ctx.save_for_backward(similarity, weights, pooled)
        ctx.inverse_gamma = inverse_gamma
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        similarity, weights, pooled = ctx.saved_tensors
        result = (similarity - pooled[:, None, :]).mul_(ctx.inverse_gamma).add_(1.0)
        return result.mul_(weights).mul_(grad[:, None, :]), None


def _positive_int(value: object, key: str, loss: str, meaning: str) -> int:
    if value is None:
        raise ValueError(
            f"{loss} needs {key} ({meaning}); pass it to fairdml.losses.create(..., {key}=...)"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{loss}: {key} must be a positive integer, got {value!r}")
    return value


def _check_positive(value: float, key: str, loss: str) -> float:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{loss}: {key} must be a positive number, got {value!r}")
    return float(value)


def _check_non_negative(value: float, key: str, loss: str) -> float:
    if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
        raise ValueError(f"{loss}: {key} must be a non-negative number, got {value!r}")
    return float(value)


def log1p_sum_exp(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + sum_j exp(logits_j))`` along ``dim``; ``-inf`` entries are left out.

    Shifted by ``m = max(0, max_j logits_j)`` (detached: it cancels analytically), so the
    sum is at least 1 and neither ``exp`` nor ``log`` can overflow; a slice that is all
    ``-inf`` gives exactly 0 with zero gradient.
    """
    shift = logits.detach().amax(dim=dim, keepdim=True).clamp_min(0.0)
    total = torch.exp(logits - shift).sum(dim=dim, keepdim=True) + torch.exp(-shift)
    return (torch.log(total) + shift).squeeze(dim)


def grouped_log1p_sum_exp(logits: torch.Tensor, groups: torch.Tensor,
                          num_groups: int) -> torch.Tensor:
    """``out[g] = log(1 + sum_{i: groups_i = g} exp(logits_i))`` for a 1-d ``logits``.

    O(B + G) with scatter operations instead of a dense (B, G) mask; an empty group gives 0.
    """
    zeros = logits.new_zeros(num_groups)
    shift = zeros.scatter_reduce(0, groups, logits.detach(), reduce="amax", include_self=True)
    terms = torch.exp(logits - shift[groups])
    total = zeros.index_add(0, groups, terms) + torch.exp(-shift)
    return torch.log(total) + shift


class _ProxyAnchorTerms(torch.autograd.Function):
    """The Proxy Anchor loss from the (B, C) cosine matrix, with a hand-written backward.

    Forward: the pull term per proxy by scatter operations over the B target cosines
    (:func:`grouped_log1p_sum_exp`), the push term by a column-wise shifted
    ``log(1 + sum exp)`` over the cosine matrix with the target entries set to ``-inf``.
    Backward: ``dL/dcos[i, p] = alpha e[i, p] / (C s_p)`` for the push term (``e`` the
    saved shifted exponentials, ``s_p`` their column total) plus, at each target entry,
    ``-alpha e_i / (|P+| S_{y_i})`` for the pull term: one pass over the matrix.
    """

    @staticmethod
    def forward(ctx, cos: torch.Tensor, labels: torch.Tensor, alpha: float,
                margin: float) -> torch.Tensor:
        classes = cos.shape[1]
        pull_logits = (cos.gather(1, labels[:, None]).squeeze(1) - margin).mul_(-alpha)
        pull_shift = pull_logits.new_zeros(classes).scatter_reduce(
            0, labels, pull_logits, reduce="amax", include_self=True)
        pull_exp = torch.exp(pull_logits - pull_shift[labels])
        pull_total = torch.exp(-pull_shift).index_add_(0, labels, pull_exp)
        present = (torch.bincount(labels, minlength=classes) > 0).sum()

        push_exp = (cos + margin).mul_(alpha).scatter_(1, labels[:, None], -float("inf"))
        push_shift = push_exp.amax(dim=0).clamp_min_(0.0)
        push_exp.sub_(push_shift).exp_()
        push_total = push_exp.sum(dim=0).add_(torch.exp(-push_shift))

        loss = ((torch.log(pull_total) + pull_shift).sum() / present
                + (torch.log(push_total) + push_shift).sum() / classes)
        ctx.save_for_backward(labels, pull_exp, pull_total, push_exp, push_total, present)
        ctx.alpha = alpha
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        labels, pull_exp, pull_total, push_exp, push_total, present = ctx.saved_tensors
        classes = push_exp.shape[1]
        grad_cos = push_exp * (push_total.reciprocal() * (ctx.alpha / classes) * grad)
        pull = pull_exp / pull_total[labels] * (-ctx.alpha * grad / present)
        return grad_cos.scatter_add_(1, labels[:, None], pull[:, None]), None, None, None


@register("proxy_anchor")
class ProxyAnchorLoss(ProxyLoss):
    r"""Proxy Anchor loss (Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric
    Learning", CVPR 2020).

    Each proxy is an anchor that pulls all embeddings of its class and pushes all others,
    weighted by their hardness through the log-sum-exp:

    .. math::
        \ell = \frac{1}{|P^+|} \sum_{p \in P^+}
                 \log\Bigl(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Bigr)
             + \frac{1}{|P|} \sum_{p \in P}
                 \log\Bigl(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Bigr)

    with ``s`` the cosine similarity, ``P`` all proxies, ``P+`` the proxies of the classes
    present in the batch, ``X_p+`` / ``X_p-`` the batch embeddings of / not of ``p``'s class.

    Defaults from the paper: ``alpha = 32``, ``margin`` (delta) ``= 0.1``; proxies trained
    with a 100x larger learning rate (``lr_multiplier = 100``) and initialised as in the
    authors' code with ``kaiming_normal_(mode="fan_out")`` (normal, std ``sqrt(2 / C)``).
    Same definition as pytorch-metric-learning's ``ProxyAnchorLoss``. A batch always has
    a positive proxy (its own labels), so singleton classes are fine.
    """

    name = "proxy_anchor"

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 alpha: float = 32.0, margin: float = 0.1,
                 lr_multiplier: float = 100.0) -> None:
        super().__init__(num_classes, embedding_dim, lr_multiplier=lr_multiplier,
                         init=lambda p: torch.nn.init.kaiming_normal_(p, mode="fan_out"))
        self.alpha = _check_positive(alpha, "alpha", self.name)
        self.margin = float(margin)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _ProxyAnchorTerms.apply(self.cosines(embeddings), labels, self.alpha,
                                       self.margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha:g}, margin={self.margin:g}"


class _ProxyNCABase(ProxyLoss):
    """Shared maths of ProxyNCA and ProxyNCA++: softmax over negative squared distances.

    For unit vectors ``|x - p|^2 = 2 - 2 cos(x, p)``; the constant ``2 / T`` cancels in
    the softmax ratio, so the logits are ``2 cos / T`` (one matmul, no distance matrix).
    Proxies are initialised as in the public ProxyNCA code: standard normal / 8.
    """

    min_classes = 2

    def __init__(self, num_classes: int | None, embedding_dim: int | None, *,
                 temperature: float, positive_in_denominator: bool,
                 lr_multiplier: float) -> None:
        super().__init__(num_classes, embedding_dim, lr_multiplier=lr_multiplier,
                         init=lambda p: p.normal_(0.0, 1.0 / 8.0))
        self.temperature = _check_positive(temperature, "temperature", self.name)
        self.positive_in_denominator = bool(positive_in_denominator)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.cosines(embeddings) * (2.0 / self.temperature)
        if self.positive_in_denominator:
            return F.cross_entropy(logits, labels)
        target = logits.gather(1, labels[:, None]).squeeze(1)
        negatives = logits.scatter(1, labels[:, None], -float("inf"))
        return (torch.logsumexp(negatives, dim=1) - target).mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.temperature:g}, "
                f"positive_in_denominator={self.positive_in_denominator}")


@register("proxy_nca")
class ProxyNCALoss(_ProxyNCABase):
    r"""ProxyNCA (Movshovitz-Attias, Toshev, Leung, Ioffe, Singh, "No Fuss Distance Metric
    Learning using Proxies", ICCV 2017).

    NCA against one proxy per class, the positive proxy compared with the *negative*
    proxies only, as in the paper's equation:

    .. math::
        \ell(x, y) = -\log \frac{e^{-d(\hat x, \hat p_y) / T}}
                               {\sum_{z \neq y} e^{-d(\hat x, \hat p_z) / T}},
        \qquad d(a, b) = \|a - b\|_2^2

    averaged over the batch, with embeddings and proxies L2-normalised (the paper fixes
    their norms). The paper has no temperature: ``temperature = 1``. Default
    ``lr_multiplier = 1`` (proxies at the network's learning rate; ProxyNCA++ showed that
    faster proxies help, see ``proxy_nca_pp``). Because the positive is not in the
    denominator the value can be negative; it is bounded since ``d`` is in [0, 4].

    ``positive_in_denominator=True`` puts the positive proxy in the denominator (a proper
    softmax). That is the definition pytorch-metric-learning's ``ProxyNCALoss`` uses; its
    value exceeds the paper's by ``log(1 + e^{-d_y / T} / sum_{z != y} e^{-d_z / T})``.
    """

    name = "proxy_nca"

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 temperature: float = 1.0, positive_in_denominator: bool = False,
                 lr_multiplier: float = 1.0) -> None:
        super().__init__(num_classes, embedding_dim, temperature=temperature,
                         positive_in_denominator=positive_in_denominator,
                         lr_multiplier=lr_multiplier)


@register("proxy_nca_pp")
class ProxyNCAPlusPlusLoss(_ProxyNCABase):
    r"""ProxyNCA++ (Teh, DeVries, Taylor, "ProxyNCA++: Revisiting and Revitalizing Proxy
    Neighborhood Component Analysis", ECCV 2020).

    The proxy assignment probability: a softmax over *all* proxies (positive included),
    L2-normalised embeddings and proxies, and a low temperature:

    .. math::
        \ell(x, y) = -\log \frac{e^{-\|\hat x - \hat p_y\|^2 / T}}
                               {\sum_{a} e^{-\|\hat x - \hat p_a\|^2 / T}}

    Defaults from the paper: ``T = 1/9``. Fast-moving proxies: the recipe trains the
    proxies with learning rate 4e2 against 4e-3 for the network, a ratio of 1e5
    (``lr_multiplier = 1e5``). The recipe uses Adam with ``eps = 1``, which makes the
    update roughly ``lr * gradient`` for small gradients; with a standard Adam ``eps``
    the update no longer scales with the gradient and a ratio this large moves the
    proxies by a large step every iteration: lower ``lr_multiplier`` in that case.
    The other ProxyNCA++ ingredients (global max pooling, LayerNorm, warm-up) belong to
    the embedder and trainer configuration. Same definition as pytorch-metric-learning's
    ``ProxyNCALoss(softmax_scale=1/T)``.
    """

    name = "proxy_nca_pp"

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 temperature: float = 1.0 / 9.0, lr_multiplier: float = 1e5) -> None:
        super().__init__(num_classes, embedding_dim, temperature=temperature,
                         positive_in_denominator=True, lr_multiplier=lr_multiplier)


@register("soft_triple")
class SoftTripleLoss(ProxyLoss):
    r"""SoftTriple loss (Qian, Shang, Sun, Hu, Li, Jin, "SoftTriple Loss: Deep Metric
    Learning Without Triplet Sampling", ICCV 2019).

    ``K`` unit-norm centres per class; the similarity to class ``c`` is the soft maximum
    over its centres, and a scaled softmax with a small margin on the true class is
    applied to those similarities:

    .. math::
        S_c(x) = \sum_k \frac{e^{\hat x^\top w_c^k / \gamma}}
                             {\sum_{k'} e^{\hat x^\top w_c^{k'} / \gamma}} \hat x^\top w_c^k,
        \qquad
        \ell(x, y) = -\log \frac{e^{\lambda (S_y(x) - \delta)}}
                               {e^{\lambda (S_y(x) - \delta)} + \sum_{c \neq y} e^{\lambda S_c(x)}}

    plus ``tau`` times the regulariser that merges redundant centres of a class:

    .. math::
        R = \frac{1}{C K (K - 1)} \sum_c \sum_{t < s} \sqrt{2 + \epsilon - 2\, w_c^{s\top} w_c^t}

    (``||w_c^s - w_c^t||`` for unit centres; ``epsilon = 1e-5`` as in the authors' code,
    so the gradient of the square root stays finite when two centres coincide).
    Defaults from the paper: ``K = 10``, ``la`` (lambda) ``= 20``, ``gamma = 0.1``,
    ``tau = 0.2``, ``margin`` (delta) ``= 0.01``; centres trained with learning rate 1e-2
    against 1e-4 for the network (``lr_multiplier = 100``, the authors' ``centerlr`` /
    ``modellr``) and initialised as their code does (``kaiming_uniform_(a=sqrt(5))`` on
    the ``dim x C*K`` matrix, i.e. uniform in ``+-1/sqrt(C*K)``).

    ``proxies`` has shape ``(num_classes, K, embedding_dim)``. pytorch-metric-learning's
    ``SoftTripleLoss`` has the same classification term but no centre regulariser
    (its value equals this loss with ``tau = 0``).
    """

    name = "soft_triple"

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, *,
                 centers_per_class: int = 10, la: float = 20.0, gamma: float = 0.1,
                 tau: float = 0.2, margin: float = 0.01, lr_multiplier: float = 100.0) -> None:
        def init(centres: torch.Tensor) -> None:
            bound = 1.0 / math.sqrt(centres.shape[0] * centres.shape[1])
            centres.uniform_(-bound, bound)

        super().__init__(num_classes, embedding_dim, lr_multiplier=lr_multiplier,
                         proxies_per_class=centers_per_class, init=init)
        self.centers_per_class = self.proxies.shape[1]
        self.la = _check_positive(la, "la", self.name)
        self.gamma = _check_positive(gamma, "gamma", self.name)
        self.tau = _check_non_negative(tau, "tau", self.name)
        self.margin = float(margin)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = self.centers_per_class
        regularized = self.tau > 0 and k > 1
        centres = self.proxies.to(embeddings.dtype)
        if regularized:  # normalised once, for the similarities and the regulariser
            centres = l2_normalize(centres.reshape(-1, self.embedding_dim)).view_as(centres)
        by_centre = centres.transpose(0, 1).reshape(-1, self.embedding_dim)  # row k*C + c
        similarity = cosine_matrix(embeddings, by_centre, p_is_unit=regularized)
        class_similarity = _SoftMaxPooling.apply(
            similarity.view(-1, k, self.num_classes), 1.0 / self.gamma)
        margins = class_similarity.new_full((len(labels), 1), -self.margin)
        logits = self.la * class_similarity.scatter_add(1, labels[:, None], margins)
        loss = F.cross_entropy(logits, labels)
        if regularized:
            loss = loss + self.tau * self.centre_regularizer(centres)
        return loss

    def centre_regularizer(self, unit_centres: torch.Tensor) -> torch.Tensor:
        """``R`` above from the (C, K, D) unit centres.

        The sum over ``t < s`` is half the sum over ``t != s`` of the full per-class Gram
        matrix (symmetric), which avoids gathering the upper triangle; the diagonal
        (``sqrt(eps)``, finite gradient) is masked out.
        """
        k = self.centers_per_class
        gram = torch.bmm(unit_centres, unit_centres.transpose(1, 2))
        distances = torch.sqrt((2.0 + _SOFT_TRIPLE_SQRT_EPS - 2.0 * gram)
                               .clamp_min(_SOFT_TRIPLE_SQRT_EPS))
        diagonal = torch.eye(k, dtype=torch.bool, device=gram.device)
        return distances.masked_fill(diagonal, 0.0).sum() / (2 * self.num_classes * k * (k - 1))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, centers_per_class={self.centers_per_class}, "
                f"la={self.la:g}, gamma={self.gamma:g}, tau={self.tau:g}, "
                f"margin={self.margin:g}")


__all__ = [
    "ProxyAnchorLoss",
    "ProxyLoss",
    "ProxyNCALoss",
    "ProxyNCAPlusPlusLoss",
    "SoftTripleLoss",
    "grouped_log1p_sum_exp",
    "log1p_sum_exp",
]
