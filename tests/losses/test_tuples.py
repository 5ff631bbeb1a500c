"""N-tuple losses: brute-force oracles, parity with pytorch-metric-learning, shared checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import regularizers as pml_regularizers

from fairdml.losses import create
from fairdml.losses.tuples import first_positive_pairs

TUPLE_LOSSES = ("npairs", "angular", "ntxent", "supcon")
RTOL = 1e-4


def batch(seed: int = 0, dim: int = 12):
    """Raw (unnormalised) embeddings, 4 classes of 3 samples plus a singleton class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4])
    raw = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64) * 2
    return raw.requires_grad_(True), labels


def value_and_grad(loss_fn, raw, labels, normalise=True):
    """Loss value and gradient w.r.t. the raw input (through an L2 normalisation if asked)."""
    inputs = F.normalize(raw, dim=1) if normalise else raw
    value = loss_fn(inputs, labels)
    (grad,) = torch.autograd.grad(value, raw)
    return value.detach(), grad


def assert_close(ours, theirs):
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=RTOL, atol=1e-6)


# ---- brute-force oracles (loops, tiny input only) ---------------------------------------

def npairs_bruteforce(x, labels, l2_weight=0.0):
    pairs = []
    for label in sorted(set(labels.tolist())):
        members = [i for i in range(len(labels)) if labels[i] == label]
        if len(members) >= 2:
            pairs.append((members[0], members[1]))
    total = x.sum() * 0
    for i, (a, p) in enumerate(pairs):
        inner = sum(torch.exp(x[a] @ x[q] - x[a] @ x[p])
                    for j, (_, q) in enumerate(pairs) if j != i)
        total = total + torch.log(1 + inner)
    loss = total / len(pairs)
    return loss + l2_weight * sum(x[i] @ x[i] for i in range(len(x))) / len(x)


def angular_bruteforce(x, labels, alpha_degrees, normalise_negatives=True):
    tan_sq = math.tan(math.radians(alpha_degrees)) ** 2
    xn = F.normalize(x, dim=1)
    negatives_source = xn if normalise_negatives else x
    per_pair = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if a == p or labels[a] != labels[p]:
                continue
            inner = x.sum() * 0
            for n in range(len(labels)):
                if labels[n] != labels[a]:
                    f = (4 * tan_sq * (xn[a] + xn[p]) @ negatives_source[n]
                         - 2 * (1 + tan_sq) * xn[a] @ xn[p])
                    inner = inner + torch.exp(f)
            per_pair.append(torch.log(1 + inner))
    return torch.stack(per_pair).mean()


def ntxent_bruteforce(x, labels, temperature):
    xn = F.normalize(x, dim=1)
    per_pair = []
    for i in range(len(labels)):
        for p in range(len(labels)):
            if i == p or labels[i] != labels[p]:
                continue
            numerator = torch.exp(xn[i] @ xn[p] / temperature)
            denominator = numerator + sum(torch.exp(xn[i] @ xn[n] / temperature)
                                          for n in range(len(labels)) if labels[n] != labels[i])
            per_pair.append(-torch.log(numerator / denominator))
    return torch.stack(per_pair).mean()


def supcon_bruteforce(x, labels, temperature):
    xn = F.normalize(x, dim=1)
    per_anchor = []
    for i in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(xn[i] @ xn[a] / temperature)
                          for a in range(len(labels)) if a != i)
        terms = [torch.log(torch.exp(xn[i] @ xn[p] / temperature) / denominator)
                 for p in positives]
        per_anchor.append(-torch.stack(terms).mean())
    return torch.stack(per_anchor).mean()


# ---- oracles ---------------------------------------------------------------------------

def test_first_positive_pairs_takes_first_two_samples_of_each_class():
    labels = torch.tensor([5, 3, 5, 9, 3, 5, 7])
    anchors, positives = first_positive_pairs(labels)
    assert anchors.tolist() == [1, 0]  # classes 3 and 5 (7 and 9 are singletons)
    assert positives.tolist() == [4, 2]


@pytest.mark.parametrize("l2_weight", [0.0, 0.002])
def test_npairs_equals_paper_formula_on_raw_embeddings(l2_weight):
    raw, labels = batch()
    ours = create("npairs", l2_weight=l2_weight)(raw, labels)
    torch.testing.assert_close(ours, npairs_bruteforce(raw, labels, l2_weight))


@pytest.mark.parametrize("alpha", [40.0, 45.0])
def test_angular_equals_paper_formula(alpha):
    raw, labels = batch()
    ours = create("angular", alpha=alpha)(raw, labels)
    torch.testing.assert_close(ours, angular_bruteforce(raw, labels, alpha))


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_ntxent_equals_infonce_formula(temperature):
    raw, labels = batch()
    ours = create("ntxent", temperature=temperature)(raw, labels)
    torch.testing.assert_close(ours, ntxent_bruteforce(raw, labels, temperature))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_equals_l_out_formula(temperature):
    raw, labels = batch()
    ours = create("supcon", temperature=temperature)(raw, labels)
    torch.testing.assert_close(ours, supcon_bruteforce(raw, labels, temperature))


def test_defaults_are_the_papers():
    assert create("angular").alpha == 40.0
    assert create("ntxent").temperature == 0.07
    assert create("supcon").temperature == 0.1
    assert create("npairs").l2_weight == 0.0


# ---- parity with pytorch-metric-learning ----------------------------------------------

PML_TWINS = {
    "npairs": (dict(), lambda: pml_losses.NPairsLoss()),
    "angular": (dict(alpha=45.0), lambda: pml_losses.AngularLoss(alpha=45)),
    "ntxent": (dict(temperature=0.1), lambda: pml_losses.NTXentLoss(temperature=0.1)),
    "supcon": (dict(temperature=0.2), lambda: pml_losses.SupConLoss(temperature=0.2)),
}


@pytest.mark.parametrize("name", TUPLE_LOSSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradient_match_pml_on_normalised_embeddings(name, seed):
    params, pml_factory = PML_TWINS[name]
    raw, labels = batch(seed)
    ours = value_and_grad(create(name, **params), raw, labels)
    theirs = value_and_grad(pml_factory(), raw, labels)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


def test_npairs_regulariser_matches_pml_lp_regularizer():
    raw, labels = batch()
    ours = value_and_grad(create("npairs", l2_weight=0.01), raw, labels, normalise=False)
    pml = pml_losses.NPairsLoss(embedding_regularizer=pml_regularizers.LpRegularizer(power=2),
                                embedding_reg_weight=0.01)
    # PML L2-normalises inside its similarity (the paper does not), so its cross entropy is
    # ours on the normalised embeddings, while its regulariser sees the raw ones.
    normalised = F.normalize(raw.detach(), dim=1)
    expected = npairs_bruteforce(normalised, labels) + 0.01 * (raw.detach() ** 2).sum(1).mean()
    assert_close(pml(raw, labels).detach(), expected)
    assert_close(ours[0], npairs_bruteforce(raw.detach(), labels, 0.01))


def test_npairs_differs_from_pml_on_raw_embeddings_by_pml_normalising():
    raw, labels = batch()
    ours = create("npairs")(raw, labels).detach()
    pml_raw = pml_losses.NPairsLoss()(raw, labels).detach()
    assert not torch.allclose(ours, pml_raw, rtol=1e-2)
    assert_close(pml_raw, create("npairs")(F.normalize(raw.detach(), dim=1), labels))


def test_angular_differs_from_pml_on_raw_embeddings_by_unnormalised_negatives():
    raw, labels = batch()
    ours = create("angular")(raw, labels).detach()
    pml_raw = pml_losses.AngularLoss(alpha=40)(raw, labels).detach()
    assert not torch.allclose(ours, pml_raw, rtol=1e-2)
    # PML normalises anchors and positives but takes the negatives x_n as given.
    assert_close(pml_raw, angular_bruteforce(raw.detach(), labels, 40.0,
                                             normalise_negatives=False))


def test_supcon_single_class_batch_follows_formula_where_pml_returns_zero():
    raw, _ = batch()
    labels = torch.zeros(len(raw), dtype=torch.long)
    ours = create("supcon")(raw, labels)
    assert_close(ours.detach(), supcon_bruteforce(raw.detach(), labels, 0.1))
    assert float(ours.detach()) > 0
    assert float(pml_losses.SupConLoss(temperature=0.1)(raw, labels).detach()) == 0.0


# ---- query / reference form ----------------------------------------------------------

@pytest.mark.parametrize("name", ["angular", "ntxent", "supcon"])
def test_batch_as_its_own_reference_set_equals_plain_call(name):
    raw, labels = batch()
    loss = create(name)
    self_mask = torch.eye(len(labels), dtype=torch.bool)
    plain = loss(raw, labels)
    with_refs = loss(raw, labels, ref_embeddings=raw, ref_labels=labels, ref_self_mask=self_mask)
    torch.testing.assert_close(plain, with_refs)


@pytest.mark.parametrize("name", ["angular", "ntxent", "supcon"])
def test_reference_form_rejects_inconsistent_arguments(name):
    raw, labels = batch()
    loss = create(name)
    with pytest.raises(ValueError, match="ref_labels"):
        loss(raw, labels, ref_embeddings=raw)
    with pytest.raises(ValueError, match="dimension"):
        loss(raw, labels, ref_embeddings=raw[:, :4], ref_labels=labels)
    with pytest.raises(ValueError, match="ref_self_mask"):
        loss(raw, labels, ref_embeddings=raw, ref_labels=labels,
             ref_self_mask=torch.ones(2, 2, dtype=torch.bool))


# ---- bad input and degenerate batches --------------------------------------------------

@pytest.mark.parametrize("name, params, match", [
    ("ntxent", dict(temperature=0.0), "temperature"),
    ("supcon", dict(temperature=-1.0), "temperature"),
    ("angular", dict(alpha=90.0), "alpha"),
    ("npairs", dict(l2_weight=-1.0), "l2_weight"),
])
def test_bad_parameters_are_refused(name, params, match):
    with pytest.raises(ValueError, match=match):
        create(name, **params)


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_bad_shapes_are_refused(name):
    with pytest.raises(ValueError, match="labels"):
        create(name)(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        create(name)(torch.randn(4, 3), torch.zeros(4))


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_no_positive_pair_gives_zero_with_zero_gradient(name):
    raw = torch.randn(5, 8, requires_grad=True)
    value = create(name)(raw, torch.arange(5))
    value.backward()
    assert float(value.detach()) == 0.0
    assert torch.count_nonzero(raw.grad) == 0


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_shared_checks(name, loss_checks):
    loss_checks.degenerate_batches_safe(create(name))
    loss_checks.safe_under_bfloat16(create(name))
    loss_checks.trains(create(name))


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_bfloat16_autocast_gives_the_float32_value(name):
    raw, labels = batch()
    embeddings = F.normalize(raw.detach().float(), dim=1)
    expected = create(name)(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = create(name)(embeddings, labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
