"""Shared loss numerics: matrices against brute force, safe reductions on empty rows."""

from __future__ import annotations

import math

import pytest
import torch

from fairdml.losses._common import (
    as_float32,
    check_embeddings_and_labels,
    cosine_similarity_matrix,
    euclidean_matrix,
    gram_matrix,
    label_masks,
    masked_logsumexp,
    masked_mean,
    mean_of_nonzero,
    normalized_euclidean_matrix,
    safe_sqrt,
    squared_euclidean_matrix,
)


def _points(n: int = 7, dim: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_matrices_match_brute_force():
    x, y = _points(), _points(4, seed=1)
    assert torch.allclose(squared_euclidean_matrix(x, y), torch.cdist(x, y) ** 2, atol=1e-12)
    assert torch.allclose(euclidean_matrix(x), torch.cdist(x, x), atol=1e-7)
    unit = torch.nn.functional.normalize(x, dim=1)
    cosine = torch.tensor([[float(a @ b / (a.norm() * b.norm())) for b in x] for a in x],
                          dtype=torch.float64)
    assert torch.allclose(cosine_similarity_matrix(x), cosine, atol=1e-12)
    assert torch.allclose(normalized_euclidean_matrix(x), torch.cdist(unit, unit), atol=1e-7)


def test_distances_have_finite_gradient_at_coincident_points():
    x = torch.cat([_points(3), _points(3)[:1]]).requires_grad_(True)  # rows 0 and 3 coincide
    (euclidean_matrix(x).sum() + normalized_euclidean_matrix(x).sum()).backward()
    assert torch.isfinite(x.grad).all()
    zero = torch.zeros(3, requires_grad=True)
    safe_sqrt(zero).sum().backward()
    assert torch.equal(zero.grad, torch.zeros(3))


def test_label_masks_exclude_the_diagonal_only_within_a_batch():
    labels = torch.tensor([0, 0, 1, 2, 1])
    positive, negative = label_masks(labels)
    expected = torch.tensor([[labels[i] == labels[j] and i != j for j in range(5)]
                             for i in range(5)])
    assert torch.equal(positive, expected)
    assert torch.equal(negative, labels[:, None] != labels[None, :])
    positive, negative = label_masks(labels, torch.tensor([1, 0]))
    assert positive.shape == (5, 2) and bool(positive[2, 0]) and bool(positive[0, 1])
    assert torch.equal(positive, ~negative)


def test_masked_logsumexp_matches_torch_and_is_safe_on_empty_rows():
    values = (torch.randn(4, 6, dtype=torch.float64) * 300).requires_grad_(True)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[1] = False
    mask[2, 0] = True
    result = masked_logsumexp(values, mask)
    for row in (0, 2, 3):
        assert torch.isclose(result[row], torch.logsumexp(values[row][mask[row]], 0))
    assert result[1] == -math.inf
    torch.nn.functional.softplus(result).sum().backward()
    assert torch.isfinite(values.grad).all()
    assert torch.equal(values.grad[1], torch.zeros(6, dtype=torch.float64))
    assert torch.equal(values.grad[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


def test_masked_logsumexp_with_zero_term_is_log_one_plus_sum():
    values = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0] = False
    result = masked_logsumexp(values, mask, include_zero=True)
    assert result[0] == 0
    assert torch.allclose(result[1:], torch.log1p(values[1:].exp().sum(1)))
    huge = masked_logsumexp(torch.full((1, 3), 1e4), torch.ones(1, 3, dtype=torch.bool),
                            include_zero=True)
    assert torch.isclose(huge, torch.tensor([1e4 + math.log(3)]))


def test_masked_logsumexp_works_along_other_dimensions():
    values = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.ones_like(values, dtype=torch.bool)
    assert torch.allclose(masked_logsumexp(values, mask, dim=2), torch.logsumexp(values, 2))


def test_means_over_masks_and_non_zero_entries():
    values = torch.tensor([0.0, 2.0, 4.0, 0.0, 6.0], requires_grad=True)
    mask = torch.tensor([True, True, False, True, True])
    assert float(masked_mean(values, mask)) == pytest.approx(8.0 / 4)
    assert float(mean_of_nonzero(values)) == pytest.approx(4.0)
    assert float(mean_of_nonzero(values, mask)) == pytest.approx(4.0)
    empty = mean_of_nonzero(values, torch.zeros(5, dtype=torch.bool))
    empty.backward()
    assert empty == 0 and torch.equal(values.grad, torch.zeros(5))


def test_as_float32_upcasts_half_precision_but_keeps_double():
    assert as_float32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert as_float32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(("embeddings", "labels", "message"), [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), "2-d"),
    (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), "one label per embedding"),
    (torch.zeros(4, 3), torch.zeros(4), "integers"),
])
def test_bad_inputs_are_named(embeddings, labels, message):
    with pytest.raises(ValueError, match=message):
        check_embeddings_and_labels(embeddings, labels)


def test_symmetric_gram_gradient_matches_autograd():
    x = _points(6, 4).requires_grad_(True)
    weights = torch.randn(6, 6, dtype=torch.float64)
    (gram_matrix(x) * weights).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    ((reference @ reference.T) * weights).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    assert torch.autograd.gradcheck(gram_matrix, (_points(4, 3).requires_grad_(True),))


def test_similarities_stay_float32_under_bfloat16_autocast():
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cosine = cosine_similarity_matrix(x)
        squared = squared_euclidean_matrix(x, x[:2])
    assert cosine.dtype == squared.dtype == torch.float32
    torch.testing.assert_close(cosine, cosine_similarity_matrix(x))
    torch.testing.assert_close(squared, squared_euclidean_matrix(x, x[:2]))
