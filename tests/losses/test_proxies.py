"""Proxy losses: parity with pytorch-metric-learning, paper formulas by brute force,
training, autocast and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml

from fairdml.losses import create, lr_multiplier, names
from fairdml.losses.proxies import (
    _ProxyAnchorTerms,
    _SoftMaxPooling,
    cosine_matrix,
    grouped_log1p_sum_exp,
    log1p_sum_exp,
)

NUM_CLASSES = 7
DIM = 12
PROXY_LOSSES = ("proxy_anchor", "proxy_nca", "proxy_nca_pp", "soft_triple")



def batch(dtype: torch.dtype = torch.float64, seed: int = 0, size: int = 20):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(size, DIM, generator=generator, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES - 1, (size,), generator=generator)  # class 6 absent
    labels[:3] = torch.tensor([0, 0, 5])
    return embeddings, labels


def value_and_grads(loss, weight, embeddings, labels):
    """Loss value and gradients w.r.t. the embeddings and the loss's weight parameter."""
    x = embeddings.clone().requires_grad_(True)
    value = loss(x, labels)
    grad_x, grad_w = torch.autograd.grad(value, (x, weight))
    return value.detach(), grad_x, grad_w


def assert_parity(ours, theirs, our_weight, their_weight, to_theirs, dtype):
    """Same value and gradients (embeddings and proxies) at rtol 1e-4."""
    with torch.no_grad():
        their_weight.copy_(to_theirs(our_weight.detach()))
    embeddings, labels = batch(dtype)
    ours = ours.to(dtype)
    theirs = theirs.to(dtype)
    v1, gx1, gw1 = value_and_grads(ours, our_weight, embeddings, labels)
    v2, gx2, gw2 = value_and_grads(theirs, their_weight, embeddings, labels)
    atol = 1e-10 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(v1, v2, rtol=1e-4, atol=atol)
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=atol)
    torch.testing.assert_close(to_theirs(gw1), gw2, rtol=1e-4, atol=atol)


def test_all_proxy_losses_registered():
    assert set(PROXY_LOSSES) <= set(names())
    for name in PROXY_LOSSES:
        loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
        assert loss.proxies.shape[0] == NUM_CLASSES and loss.proxies.shape[-1] == DIM
        assert isinstance(loss.proxies, torch.nn.Parameter)


def test_lr_multipliers_follow_the_papers_recipes():
    expected = {"proxy_anchor": 100.0, "proxy_nca": 1.0, "proxy_nca_pp": 4e2 / 4e-3,
                "soft_triple": 1e-2 / 1e-4}
    for name, multiplier in expected.items():
        loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
        assert lr_multiplier(loss) == pytest.approx(multiplier)
    assert lr_multiplier(create("proxy_anchor", num_classes=3, embedding_dim=4,
                                lr_multiplier=7)) == 7.0


# --- parity with pytorch-metric-learning -----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_proxy_anchor_matches_pml(dtype):
    torch.manual_seed(0)
    ours = create("proxy_anchor", num_classes=NUM_CLASSES, embedding_dim=DIM)
    theirs = pml.ProxyAnchorLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                 margin=0.1, alpha=32)
    assert_parity(ours, theirs, ours.proxies, theirs.proxies, lambda w: w, dtype)


def test_proxy_anchor_matches_pml_with_other_parameters():
    torch.manual_seed(1)
    ours = create("proxy_anchor", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  alpha=8.0, margin=0.3)
    theirs = pml.ProxyAnchorLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                 margin=0.3, alpha=8.0)
    assert_parity(ours, theirs, ours.proxies, theirs.proxies, lambda w: w, torch.float64)


def test_proxy_anchor_init_is_kaiming_normal_fan_out():
    torch.manual_seed(0)
    loss = create("proxy_anchor", num_classes=50, embedding_dim=400)
    assert float(loss.proxies.detach().std()) == pytest.approx(math.sqrt(2 / 50), rel=0.05)


@pytest.mark.parametrize("temperature", [1.0 / 9.0, 0.5])
def test_proxy_nca_pp_matches_pml_proxy_nca_with_softmax_scale(temperature):
    torch.manual_seed(0)
    ours = create("proxy_nca_pp", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  temperature=temperature)
    theirs = pml.ProxyNCALoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                              softmax_scale=1.0 / temperature)
    assert_parity(ours, theirs, ours.proxies, theirs.proxies, lambda w: w, torch.float64)


def test_proxy_nca_with_positive_in_denominator_matches_pml():
    torch.manual_seed(0)
    ours = create("proxy_nca", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  positive_in_denominator=True)
    theirs = pml.ProxyNCALoss(num_classes=NUM_CLASSES, embedding_size=DIM)
    assert_parity(ours, theirs, ours.proxies, theirs.proxies, lambda w: w, torch.float32)


def proxy_nca_paper_bruteforce(embeddings, labels, proxies, temperature):
    """ProxyNCA, eq. of Movshovitz-Attias et al.: negatives only in the denominator."""
    x = torch.nn.functional.normalize(embeddings, dim=1)
    p = torch.nn.functional.normalize(proxies, dim=1)
    total = 0.0
    for i in range(len(labels)):
        y = int(labels[i])
        distance = [float(((x[i] - p[c]) ** 2).sum()) / temperature for c in range(len(p))]
        negatives = sum(math.exp(-distance[c]) for c in range(len(p)) if c != y)
        total += -math.log(math.exp(-distance[y]) / negatives)
    return total / len(labels)


def test_proxy_nca_follows_the_paper_and_differs_from_pml_by_the_positive_term():
    """The paper's denominator has the negative proxies only; PML's has all proxies.

    Both facts: our value is the paper's formula (brute force), and PML's value is ours
    plus the mean of ``log(1 + e^{-d_y} / sum_{z != y} e^{-d_z})``.
    """
    torch.manual_seed(0)
    ours = create("proxy_nca", num_classes=NUM_CLASSES, embedding_dim=DIM).double()
    theirs = pml.ProxyNCALoss(num_classes=NUM_CLASSES, embedding_size=DIM).double()
    with torch.no_grad():
        theirs.proxies.copy_(ours.proxies)
    embeddings, labels = batch()
    value = ours(embeddings, labels).item()
    assert value == pytest.approx(
        proxy_nca_paper_bruteforce(embeddings, labels, ours.proxies.detach(), 1.0), rel=1e-9)

    x = torch.nn.functional.normalize(embeddings, dim=1)
    p = torch.nn.functional.normalize(ours.proxies.detach(), dim=1)
    distances = torch.cdist(x, p) ** 2
    positive = torch.exp(-distances.gather(1, labels[:, None]).squeeze(1))
    negatives = torch.exp(-distances).sum(1) - positive
    gap = float(torch.log1p(positive / negatives).mean())
    assert gap > 1e-3
    assert theirs(embeddings, labels).item() == pytest.approx(value + gap, rel=1e-9)


def test_proxy_nca_temperature_scales_the_distances():
    torch.manual_seed(0)
    loss = create("proxy_nca", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  temperature=0.25).double()
    embeddings, labels = batch()
    assert loss(embeddings, labels).item() == pytest.approx(
        proxy_nca_paper_bruteforce(embeddings, labels, loss.proxies.detach(), 0.25), rel=1e-9)


def soft_triple_to_pml(centres: torch.Tensor) -> torch.Tensor:
    """Ours (C, K, D) -> PML's fc (D, C*K) with column c*K + k."""
    return centres.reshape(-1, centres.shape[-1]).T


def test_soft_triple_without_regulariser_matches_pml():
    torch.manual_seed(0)
    ours = create("soft_triple", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  centers_per_class=4, tau=0.0)
    theirs = pml.SoftTripleLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                centers_per_class=4, la=20, gamma=0.1, margin=0.01)
    assert_parity(ours, theirs, ours.proxies, theirs.fc, soft_triple_to_pml, torch.float64)


def soft_triple_regulariser_bruteforce(centres: torch.Tensor) -> float:
    """R of the SoftTriple paper with the authors' 1e-5 inside the square root."""
    w = torch.nn.functional.normalize(centres, dim=2)
    classes, k, _ = w.shape
    total = 0.0
    for c in range(classes):
        for t in range(k):
            for s in range(t + 1, k):
                total += math.sqrt(2 + 1e-5 - 2 * float(w[c, s] @ w[c, t]))
    return total / (classes * k * (k - 1))


def test_soft_triple_adds_the_paper_regulariser_that_pml_leaves_out():
    """PML's SoftTripleLoss has no centre regulariser: ours = PML + tau * R exactly."""
    torch.manual_seed(0)
    ours = create("soft_triple", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  centers_per_class=3).double()
    assert ours.tau == 0.2
    theirs = pml.SoftTripleLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                centers_per_class=3).double()
    with torch.no_grad():
        theirs.fc.copy_(soft_triple_to_pml(ours.proxies))
    embeddings, labels = batch()
    regulariser = soft_triple_regulariser_bruteforce(ours.proxies.detach())
    assert regulariser > 0.1
    assert ours(embeddings, labels).item() == pytest.approx(
        theirs(embeddings, labels).item() + 0.2 * regulariser, rel=1e-9)


def soft_triple_autograd_reference(x, centres, labels, la=20.0, gamma=0.1, tau=0.2,
                                   margin=0.01):
    """SoftTriple + regulariser written plainly with autograd (the gradient oracle)."""
    classes, k, _ = centres.shape
    w = torch.nn.functional.normalize(centres, dim=2)
    similarity = torch.einsum("bd,ckd->bck", torch.nn.functional.normalize(x, dim=1), w)
    pooled = (torch.softmax(similarity / gamma, dim=2) * similarity).sum(2)
    logits = la * (pooled - margin * torch.nn.functional.one_hot(labels, classes))
    rows, cols = torch.triu_indices(k, k, offset=1)
    gram = torch.einsum("ckd,cld->ckl", w, w)[:, rows, cols]
    regulariser = torch.sqrt(2 + 1e-5 - 2 * gram).sum() / (classes * k * (k - 1))
    return torch.nn.functional.cross_entropy(logits, labels) + tau * regulariser


def test_soft_triple_gradients_with_the_regulariser_match_plain_autograd():
    torch.manual_seed(0)
    loss = create("soft_triple", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  centers_per_class=4).double()
    embeddings, labels = batch()
    v1, gx1, gw1 = value_and_grads(loss, loss.proxies, embeddings, labels)
    centres = loss.proxies.detach().clone().requires_grad_(True)
    x = embeddings.clone().requires_grad_(True)
    reference = soft_triple_autograd_reference(x, centres, labels)
    gx2, gw2 = torch.autograd.grad(reference, (x, centres))
    torch.testing.assert_close(v1, reference.detach())
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gw1, gw2)


def test_soft_triple_regulariser_gradient_is_finite_for_coincident_centres():
    loss = create("soft_triple", num_classes=3, embedding_dim=DIM, centers_per_class=2)
    with torch.no_grad():
        loss.proxies[:, 1] = loss.proxies[:, 0]
    embeddings, labels = batch(torch.float32)
    embeddings, labels = embeddings[:5], labels[:5].clamp_max(2)
    loss(embeddings, labels).backward()
    assert torch.isfinite(loss.proxies.grad).all()


def test_soft_triple_init_matches_the_authors_code():
    torch.manual_seed(0)
    loss = create("soft_triple", num_classes=20, embedding_dim=64, centers_per_class=5)
    bound = 1 / math.sqrt(100)
    largest = float(loss.proxies.detach().abs().max())
    assert 0.9 * bound < largest <= bound


# --- numerics helpers -------------------------------------------------------------------


def test_log1p_sum_exp_is_exact_and_safe():
    values = torch.tensor([[0.5, -float("inf"), 300.0], [-float("inf")] * 3],
                          dtype=torch.float64, requires_grad=True)
    result = log1p_sum_exp(values, dim=1)
    assert result[0].item() == pytest.approx(300.0, rel=1e-15)
    assert result[1].item() == 0.0
    result.sum().backward()
    assert torch.isfinite(values.grad).all()
    assert values.grad[1].abs().sum() == 0


def test_cosine_matrix_value_and_hand_written_gradient():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.cosine_similarity(x[:, None, :], p[None, :, :], dim=2)
    torch.testing.assert_close(cosine_matrix(x, p), expected)
    assert torch.autograd.gradcheck(cosine_matrix, (x, p))


def test_double_backward_through_the_hand_written_gradients_is_refused():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(cosine_matrix(x, p).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


def test_soft_max_pooling_value_and_hand_written_gradient():
    generator = torch.Generator().manual_seed(4)
    similarity = torch.rand(3, 4, 5, generator=generator, dtype=torch.float64) * 2 - 1
    similarity.requires_grad_(True)
    weights = torch.softmax(similarity / 0.1, dim=1)
    torch.testing.assert_close(_SoftMaxPooling.apply(similarity, 10.0),
                               (weights * similarity).sum(1))
    assert torch.autograd.gradcheck(lambda s: _SoftMaxPooling.apply(s, 10.0), (similarity,))


@pytest.mark.parametrize("labels", [[0, 0, 2, 3, 3], [1, 1, 1, 1, 1]])
def test_proxy_anchor_hand_written_gradient(labels):
    """gradcheck, also when one proxy has every sample as a positive (no negative)."""
    generator = torch.Generator().manual_seed(5)
    cos = (torch.rand(5, 4, generator=generator, dtype=torch.float64) * 2 - 1)
    cos.requires_grad_(True)
    labels = torch.tensor(labels)
    assert torch.autograd.gradcheck(
        lambda c: _ProxyAnchorTerms.apply(c, labels, 8.0, 0.1), (cos,))


def test_grouped_log1p_sum_exp_matches_a_loop():
    logits = torch.tensor([1.0, -2.0, 500.0, 0.3], dtype=torch.float64)
    groups = torch.tensor([0, 2, 2, 0])
    result = grouped_log1p_sum_exp(logits, groups, 4)
    expected = [math.log(1 + math.exp(1.0) + math.exp(0.3)), 0.0, 500.0, 0.0]
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64))


# --- shared requirements: trains, autocast, degenerate batches, bad input ---------------






@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_labels_outside_the_class_range_are_refused(name):
    loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
    embeddings = torch.randn(4, DIM)
    with pytest.raises(ValueError, match=r"label 7 is outside 0\.\.6 \(num_classes=7\)"):
        loss(embeddings, torch.tensor([0, 1, 7, 2]))
    with pytest.raises(ValueError, match="label -1"):
        loss(embeddings, torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        loss(embeddings, torch.tensor([0.0, 1.0, 1.0, 2.0]))


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_bad_construction_and_shapes_are_clear_errors(name):
    with pytest.raises(ValueError, match="needs num_classes"):
        create(name, embedding_dim=DIM)
    with pytest.raises(ValueError, match="needs embedding_dim"):
        create(name, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="lr_multiplier"):
        create(name, num_classes=NUM_CLASSES, embedding_dim=DIM, lr_multiplier=0)
    loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
    with pytest.raises(ValueError, match="embedding_dim=12, got embeddings of dimension 5"):
        loss(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="empty"):
        loss(torch.randn(0, DIM), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="one label per embedding"):
        loss(torch.randn(3, DIM), torch.tensor([0, 1]))


def test_softmax_proxy_losses_need_two_classes():
    for name in ("proxy_nca", "proxy_nca_pp"):
        with pytest.raises(ValueError, match="num_classes >= 2"):
            create(name, num_classes=1, embedding_dim=DIM)


def test_proxy_anchor_gives_absent_classes_only_the_push_gradient():
    """A proxy without samples in the batch gets the gradient of its negative term only:
    ``(1/C) log(1 + sum_x exp(alpha (cos(x, p) + delta)))``, every sample a negative."""
    torch.manual_seed(0)
    loss = create("proxy_anchor", num_classes=NUM_CLASSES, embedding_dim=DIM).double()
    embeddings, labels = batch()
    loss(embeddings, labels).backward()
    absent = NUM_CLASSES - 1
    proxy = loss.proxies.detach()[absent].clone().requires_grad_(True)
    cos = torch.nn.functional.normalize(embeddings, dim=1) @ (proxy / proxy.norm())
    push = torch.log1p(torch.exp(32 * (cos + 0.1)).sum()) / NUM_CLASSES
    (expected,) = torch.autograd.grad(push, proxy)
    torch.testing.assert_close(loss.proxies.grad[absent], expected)
