"""Classification losses (normalised class weights): parity with pytorch-metric-learning,
brute-force formulas, safe angular margin, training, autocast and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml

from fairdml.losses import create, lr_multiplier, names
from fairdml.losses.classification import additive_angular_margin

NUM_CLASSES = 7
DIM = 12
CLASSIFICATION_LOSSES = ("normalized_softmax", "cosface", "arcface", "subcenter_arcface")



def batch(dtype: torch.dtype = torch.float64, seed: int = 0, size: int = 20):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(size, DIM, generator=generator, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return embeddings, labels


def value_and_grads(loss, weight, embeddings, labels):
    x = embeddings.clone().requires_grad_(True)
    value = loss(x, labels)
    grad_x, grad_w = torch.autograd.grad(value, (x, weight))
    return value.detach(), grad_x, grad_w


def transpose(weight: torch.Tensor) -> torch.Tensor:
    """Ours (C, D) or (C, K, D) -> PML's W (D, C) or (D, C*K) with column c*K + k."""
    return weight.reshape(-1, weight.shape[-1]).T


def assert_parity(ours, theirs, dtype, seed=0):
    """Same value and gradients (embeddings and class weights) at rtol 1e-4."""
    with torch.no_grad():
        theirs.W.copy_(transpose(ours.proxies.detach()))
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    embeddings, labels = batch(dtype, seed)
    v1, gx1, gw1 = value_and_grads(ours, ours.proxies, embeddings, labels)
    v2, gx2, gw2 = value_and_grads(theirs, theirs.W, embeddings, labels)
    # scale-64 logits give gradients of order 100: float32 round-off is ~1e-5 absolute
    atol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(v1, v2, rtol=1e-4, atol=atol)
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=atol)
    torch.testing.assert_close(transpose(gw1), gw2, rtol=1e-4, atol=atol)


def test_all_classification_losses_registered_with_their_weights_as_proxies():
    assert set(CLASSIFICATION_LOSSES) <= set(names())
    shapes = {"normalized_softmax": (NUM_CLASSES, DIM), "cosface": (NUM_CLASSES, DIM),
              "arcface": (NUM_CLASSES, DIM), "subcenter_arcface": (NUM_CLASSES, 3, DIM)}
    for name, shape in shapes.items():
        loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
        assert isinstance(loss.proxies, torch.nn.Parameter)
        assert tuple(loss.proxies.shape) == shape
        assert lr_multiplier(loss) == 1.0


# --- parity with pytorch-metric-learning -----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalized_softmax_matches_pml(dtype):
    torch.manual_seed(0)
    ours = create("normalized_softmax", num_classes=NUM_CLASSES, embedding_dim=DIM)
    assert ours.temperature == 0.05
    theirs = pml.NormalizedSoftmaxLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                       temperature=0.05)
    assert_parity(ours, theirs, dtype)


def test_normalized_softmax_temperature_is_a_parameter():
    torch.manual_seed(0)
    ours = create("normalized_softmax", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  temperature=0.5)
    theirs = pml.NormalizedSoftmaxLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                       temperature=0.5)
    assert_parity(ours, theirs, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cosface_matches_pml(dtype):
    torch.manual_seed(0)
    ours = create("cosface", num_classes=NUM_CLASSES, embedding_dim=DIM)
    assert (ours.scale, ours.margin) == (64.0, 0.35)
    theirs = pml.CosFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM, margin=0.35,
                             scale=64)
    assert_parity(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_arcface_matches_pml(dtype):
    """PML's margin is in degrees; the paper's 0.5 rad is 28.65 degrees."""
    torch.manual_seed(0)
    ours = create("arcface", num_classes=NUM_CLASSES, embedding_dim=DIM)
    assert (ours.scale, ours.margin) == (64.0, 0.5)
    theirs = pml.ArcFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                             margin=math.degrees(0.5), scale=64)
    assert_parity(ours, theirs, dtype)


def test_arcface_matches_pml_in_the_fallback_region():
    """Targets with theta > pi - m take the ``cos(theta) - m sin(m)`` branch in both."""
    torch.manual_seed(0)
    ours = create("arcface", num_classes=NUM_CLASSES, embedding_dim=DIM, margin=1.2,
                  scale=8.0).double()
    theirs = pml.ArcFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                             margin=math.degrees(1.2), scale=8).double()
    with torch.no_grad():
        theirs.W.copy_(transpose(ours.proxies))
    embeddings, labels = batch()
    unit_weights = torch.nn.functional.normalize(ours.proxies.detach(), dim=1)
    embeddings[:5] = -unit_weights[labels[:5]] + 0.05 * embeddings[:5]
    cos = torch.nn.functional.cosine_similarity(embeddings[:5], unit_weights[labels[:5]])
    assert bool((cos < -math.cos(1.2)).all())
    v1, gx1, _ = value_and_grads(ours, ours.proxies, embeddings, labels)
    v2, gx2, _ = value_and_grads(theirs, theirs.W, embeddings, labels)
    torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_subcenter_arcface_matches_pml(dtype):
    torch.manual_seed(0)
    ours = create("subcenter_arcface", num_classes=NUM_CLASSES, embedding_dim=DIM)
    assert ours.sub_centers == 3
    theirs = pml.SubCenterArcFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                      margin=math.degrees(0.5), scale=64, sub_centers=3)
    assert_parity(ours, theirs, dtype)


# --- brute-force formulas ----------------------------------------------------------------


def margin_softmax_bruteforce(embeddings, labels, weights, target_logit, scale):
    """Mean of -log softmax, target logit ``scale * target_logit(cos)``, by loops."""
    total = 0.0
    for i in range(len(labels)):
        x = embeddings[i] / embeddings[i].norm()
        cosines = [float(x @ (w / w.norm())) for w in weights]
        y = int(labels[i])
        logits = [scale * (target_logit(c) if j == y else c) for j, c in enumerate(cosines)]
        top = max(logits)
        total += -(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / len(labels)


def test_arcface_is_the_paper_formula_with_acos():
    torch.manual_seed(0)
    loss = create("arcface", num_classes=NUM_CLASSES, embedding_dim=DIM).double()
    embeddings, labels = batch()
    expected = margin_softmax_bruteforce(
        embeddings, labels, loss.proxies.detach(),
        lambda c: math.cos(math.acos(c) + 0.5), 64.0)
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-9)


def test_cosface_and_normalized_softmax_are_the_paper_formulas():
    torch.manual_seed(0)
    embeddings, labels = batch()
    cosface = create("cosface", num_classes=NUM_CLASSES, embedding_dim=DIM,
                     margin=0.2, temperature=0.1).double()
    assert cosface.scale == pytest.approx(10.0)
    assert cosface(embeddings, labels).item() == pytest.approx(margin_softmax_bruteforce(
        embeddings, labels, cosface.proxies.detach(), lambda c: c - 0.2, 10.0), rel=1e-9)
    softmax = create("normalized_softmax", num_classes=NUM_CLASSES, embedding_dim=DIM).double()
    assert softmax(embeddings, labels).item() == pytest.approx(margin_softmax_bruteforce(
        embeddings, labels, softmax.proxies.detach(), lambda c: c, 20.0), rel=1e-9)


def test_subcenter_arcface_uses_the_nearest_subcentre():
    torch.manual_seed(0)
    loss = create("subcenter_arcface", num_classes=NUM_CLASSES, embedding_dim=DIM,
                  sub_centers=2).double()
    embeddings, labels = batch()
    unit = torch.nn.functional.normalize(loss.proxies.detach(), dim=2)
    x = torch.nn.functional.normalize(embeddings, dim=1)
    nearest = torch.stack([
        unit[c, int(torch.argmax(unit[c] @ x[i]))] for i in range(len(x))
        for c in range(NUM_CLASSES)
    ]).view(len(x), NUM_CLASSES, DIM)
    cos = (nearest * x[:, None, :]).sum(2)
    total = 0.0
    for i in range(len(x)):
        logits = 64.0 * cos[i].clone()
        y = int(labels[i])
        logits[y] = 64.0 * math.cos(math.acos(float(cos[i, y])) + 0.5)
        total += float(-torch.log_softmax(logits, 0)[y])
    assert loss(embeddings, labels).item() == pytest.approx(total / len(x), rel=1e-9)


def test_dominant_proxies_pick_the_most_voted_subcentre():
    loss = create("subcenter_arcface", num_classes=2, embedding_dim=3, sub_centers=3)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([
            [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]],
            [[-1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]],
        ]))
    embeddings = torch.tensor([[0.1, 1.0, 0], [0, 1.0, 0.2], [1.0, 0, 0], [0, 0, -1.0]])
    labels = torch.tensor([0, 0, 0, 1])
    dominant = loss.dominant_proxies(embeddings, labels)
    torch.testing.assert_close(dominant, torch.tensor([[0, 1.0, 0], [0, 0, -1.0]]))


def test_outliers_are_samples_far_from_their_dominant_subcentre():
    loss = create("subcenter_arcface", num_classes=2, embedding_dim=3, sub_centers=2)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]],
                                         [[0, 0, 1.0], [0, 0, -1.0]]]))
    embeddings = torch.tensor([[1.0, 0.1, 0], [1.0, 0, 0.1], [0, 0.2, 1.0],  # class 0
                               [0, 0.1, 1.0], [1.0, 0, 0.05]])  # class 1
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert loss.outliers(embeddings, labels).tolist() == [2, 4]
    # sample 4 is 87.1 degrees from (0, 0, 1); sample 2 is 90 degrees from (1, 0, 0)
    assert loss.outliers(embeddings, labels, max_angle_degrees=88.0).tolist() == [2]
    with pytest.raises(ValueError, match="max_angle_degrees"):
        loss.outliers(embeddings, labels, max_angle_degrees=200)


# --- numerically safe angular margin -----------------------------------------------------


def test_additive_angular_margin_equals_cos_of_theta_plus_m():
    cos = torch.linspace(-0.99, 0.99, 41, dtype=torch.float64)
    margin = 0.5
    result = additive_angular_margin(cos, margin)
    theta = torch.acos(cos)
    expected = torch.where(theta <= math.pi - margin, torch.cos(theta + margin),
                           cos - margin * math.sin(margin))
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("name", ["arcface", "subcenter_arcface"])
def test_arcface_gradient_is_finite_when_an_embedding_sits_on_its_class_weight(name):
    """cos = +-1 exactly: acos has an infinite derivative there, our formulation does not."""
    torch.manual_seed(0)
    loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
    on_weight = loss.proxies.detach().reshape(-1, DIM)[:4].clone()  # rows: c, or (c, k)
    embeddings = torch.cat([on_weight, -on_weight]).requires_grad_(True)
    labels = torch.arange(4).repeat(2) if name == "arcface" else torch.tensor([0, 0, 0, 1] * 2)
    value = loss(embeddings, labels)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(loss.proxies.grad).all()


# --- shared requirements: trains, autocast, degenerate batches, bad input ---------------






@pytest.mark.parametrize("name", CLASSIFICATION_LOSSES)
def test_labels_outside_the_class_range_are_refused(name):
    loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
    embeddings = torch.randn(3, DIM)
    with pytest.raises(ValueError, match=r"label 9 is outside 0\.\.6 \(num_classes=7\)"):
        loss(embeddings, torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match="label -2"):
        loss(embeddings, torch.tensor([0, -2, 1]))


@pytest.mark.parametrize("name", CLASSIFICATION_LOSSES)
def test_bad_parameters_are_clear_errors(name):
    with pytest.raises(ValueError, match="needs num_classes"):
        create(name, embedding_dim=DIM)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        create(name, num_classes=1, embedding_dim=DIM)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        create(name, num_classes=3, embedding_dim=DIM, temperature=0.0)
    loss = create(name, num_classes=3, embedding_dim=DIM)
    with pytest.raises(ValueError, match="embedding_dim=12, got embeddings of dimension 4"):
        loss(torch.randn(2, 4), torch.tensor([0, 1]))


def test_scale_and_temperature_are_exclusive_and_margin_is_checked():
    with pytest.raises(ValueError, match="either scale or temperature"):
        create("cosface", num_classes=3, embedding_dim=4, scale=30.0, temperature=0.1)
    with pytest.raises(ValueError, match="radians"):
        create("arcface", num_classes=3, embedding_dim=4, margin=28.6)
