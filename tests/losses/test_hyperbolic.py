"""Poincare-ball geometry and Hyp-ViT's pairwise cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from fairdml.losses import create
from fairdml.losses.hyperbolic import (
    check_on_ball,
    clamp_to_ball,
    expmap0,
    poincare_distance,
)

C = 0.1


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Mobius addition on the Poincare ball (Ganea et al. 2018), for two vectors."""
    xy, x2, y2 = x @ y, x @ x, y @ y
    numerator = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return numerator / (1 + 2 * c * xy + c * c * x2 * y2)


def distance_bruteforce(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """``2 / sqrt(c) * artanh(sqrt(c) |(-x) (+) y|)`` pair by pair."""
    rows = []
    for i in range(len(x)):
        row = []
        for j in range(len(y)):
            norm = torch.linalg.norm(mobius_add(-x[i], y[j], c))
            row.append(2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * norm))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ball_points(n: int, dim: int = 5, seed: int = 0, radius: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return expmap0(torch.randn(n, dim, generator=generator, dtype=torch.float64) * radius, C)


def pair_ce_bruteforce(z: torch.Tensor, labels: torch.Tensor, c: float, t: float):
    d = distance_bruteforce(z, z, c)
    losses = []
    for i in range(len(labels)):
        positives = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(-d[i, k] / t) for k in range(len(labels)) if k != i)
        losses.append(sum(-torch.log(torch.exp(-d[i, j] / t) / denominator)
                          for j in positives) / len(positives))
    return sum(losses) / len(losses)


# ---------------------------------------------------------------- geometry


def test_poincare_distance_equals_the_mobius_formula():
    x, y = ball_points(6, seed=1), ball_points(4, seed=2)
    torch.testing.assert_close(poincare_distance(x, y, C), distance_bruteforce(x, y, C))
    torch.testing.assert_close(poincare_distance(x, c=1.0 / 9),
                               distance_bruteforce(x, x, 1.0 / 9), atol=1e-6, rtol=1e-7)


def test_poincare_distance_from_origin_and_symmetry():
    x = ball_points(5, seed=3)
    origin = torch.zeros(1, 5, dtype=torch.float64)
    expected = 2 / math.sqrt(C) * torch.atanh(math.sqrt(C) * x.norm(dim=1))
    torch.testing.assert_close(poincare_distance(origin, x, C)[0], expected)
    d = poincare_distance(x, c=C)
    torch.testing.assert_close(d, d.T)
    assert torch.all(d.diagonal() == 0)


def test_gradient_is_finite_for_coincident_points():
    x = ball_points(3, seed=4)
    x = torch.cat([x, x[:1]]).requires_grad_(True)
    poincare_distance(x, c=C).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_points_off_the_ball_are_refused(scale):
    x = torch.zeros(3, 4)
    x[1, 0] = scale / math.sqrt(C)
    with pytest.raises(ValueError, match="not on the Poincare ball"):
        poincare_distance(x, c=C)
    with pytest.raises(ValueError, match="project=True"):
        check_on_ball(x, C)


def test_bad_curvature_is_refused():
    with pytest.raises(ValueError, match="curvature"):
        poincare_distance(torch.zeros(2, 3), c=0.0)


@pytest.mark.parametrize("dtype,gap", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_points_next_to_the_boundary_stay_finite(dtype, gap):
    direction = torch.nn.functional.normalize(torch.randn(4, 3, dtype=dtype), dim=1)
    x = (direction * (1 - gap) / math.sqrt(C)).requires_grad_(True)
    d = poincare_distance(x, c=C)
    assert torch.isfinite(d).all()
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(clamp_to_ball(x, C).norm(dim=1) <= (1 - 1e-5) / math.sqrt(C) + 1e-6)


def test_expmap0_norm_and_feature_clipping():
    v = torch.tensor([[0.5, 0.0], [0.0, 10.0], [0.0, 0.0]], dtype=torch.float64)
    z = expmap0(v, C, clip_radius=2.3)
    expected = torch.tanh(math.sqrt(C) * torch.tensor([0.5, 2.3, 0.0],
                                                      dtype=torch.float64)) / math.sqrt(C)
    torch.testing.assert_close(z.norm(dim=1), expected)
    torch.testing.assert_close(torch.nn.functional.normalize(z[:2], dim=1),
                               torch.nn.functional.normalize(v[:2], dim=1))
    unclipped = expmap0(v, C, clip_radius=None)
    assert unclipped[1].norm() > z[1].norm()
    assert unclipped[1].norm() < 1 / math.sqrt(C)


# ---------------------------------------------------------------- the loss


def test_pair_ce_matches_the_formula():
    z = ball_points(8, seed=5)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    value = create("hyperbolic_pair_ce")(z, labels)
    torch.testing.assert_close(value, pair_ce_bruteforce(z, labels, C, 0.2))


def test_pair_ce_with_two_views_is_the_hyp_vit_cross_entropy():
    """Two samples per class: cross-entropy of each sample's other view vs all others."""
    z = ball_points(6, seed=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = -poincare_distance(z, c=C) / 0.2
    logits = logits.masked_fill(torch.eye(6, dtype=torch.bool), -float("inf"))
    target = torch.tensor([3, 4, 5, 0, 1, 2])
    expected = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(create("hyperbolic_pair_ce")(z, labels), expected)


def test_project_option_maps_euclidean_inputs():
    v = torch.randn(8, 5, dtype=torch.float64) * 10
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="Poincare ball"):
        create("hyperbolic_pair_ce")(v, labels)
    projected = create("hyperbolic_pair_ce", project=True)(v, labels)
    torch.testing.assert_close(projected, pair_ce_bruteforce(expmap0(v, C), labels, C, 0.2))


def test_gradient_matches_bruteforce():
    z = ball_points(6, seed=7)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ours = z.clone().requires_grad_(True)
    create("hyperbolic_pair_ce")(ours, labels).backward()
    theirs = z.clone().requires_grad_(True)
    pair_ce_bruteforce(theirs, labels, C, 0.2).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        create("hyperbolic_pair_ce", temperature=0.0)
    with pytest.raises(ValueError, match="curvature"):
        create("hyperbolic_pair_ce", c=-1.0)


def test_no_positive_pair_gives_zero_with_zero_gradient():
    z = ball_points(5, seed=8).requires_grad_(True)
    value = create("hyperbolic_pair_ce")(z, torch.arange(5))
    value.backward()
    assert float(value) == 0.0 and torch.count_nonzero(z.grad) == 0


def test_trains(loss_checks):
    loss_checks.trains(create("hyperbolic_pair_ce"))


def test_trains_with_projection(loss_checks):
    loss_checks.trains(create("hyperbolic_pair_ce", project=True))


def test_safe_under_bfloat16(loss_checks):
    loss_checks.safe_under_bfloat16(create("hyperbolic_pair_ce"))


def test_degenerate_batches_safe(loss_checks):
    loss_checks.degenerate_batches_safe(create("hyperbolic_pair_ce"))
