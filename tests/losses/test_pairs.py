"""Pair and triplet losses: parity with pytorch-metric-learning, brute-force oracles, safety."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from fairdml import losses
from fairdml.losses import miners
from fairdml.losses.miners import Pairs, Triplets
from fairdml.losses.pairs import snr_distance_matrix

FAMILY = ["contrastive", "triplet", "lifted_structure", "generalized_lifted", "margin",
          "multi_similarity", "snr_contrastive", "circle"]


def _batch(n: int = 32, dim: int = 12, classes: int = 6, seed: int = 0,
           dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=generator, dtype=dtype)
    labels = torch.arange(n) % classes
    return embeddings, labels


def _value_and_grad(loss, embeddings, labels, *extra):
    x = embeddings.clone().requires_grad_(True)
    value = loss(x, labels, *extra)
    value.backward()
    return value.detach(), x.grad


def _assert_parity(ours, theirs, embeddings, labels, pml_miner=None):
    value, grad = _value_and_grad(ours, embeddings, labels)
    extra = (pml_miner(embeddings, labels),) if pml_miner is not None else ()
    expected_value, expected_grad = _value_and_grad(theirs, embeddings, labels, *extra)
    assert float(expected_value) != 0, "a parity case must exercise the loss"
    torch.testing.assert_close(value, expected_value.to(value.dtype), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


def _band(kind: str, margin: float = 0.2):
    return dict(ours=miners.create("triplet_margin", margin=margin, type_of_triplets=kind),
                theirs=pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind))


PARITY_CASES = {
    "contrastive": lambda: (losses.create("contrastive"), pml_losses.ContrastiveLoss(), None),
    "contrastive_margins": lambda: (
        losses.create("contrastive", pos_margin=0.3, neg_margin=0.8),
        pml_losses.ContrastiveLoss(pos_margin=0.3, neg_margin=0.8), None),
    "contrastive_pair_margin": lambda: (
        losses.create("contrastive", miner=miners.create("pair_margin", pos_margin=1.2,
                                                         neg_margin=1.4)),
        pml_losses.ContrastiveLoss(), pml_miners.PairMarginMiner(pos_margin=1.2, neg_margin=1.4)),
    "triplet_all": lambda: (losses.create("triplet", margin=0.05, miner=None),
                            pml_losses.TripletMarginLoss(margin=0.05), None),
    "triplet_soft": lambda: (losses.create("triplet", margin=0.1, soft=True),
                             pml_losses.TripletMarginLoss(margin=0.1, smooth_loss=True), None),
    "triplet_batch_hard": lambda: (losses.create("triplet", miner="batch_hard"),
                                   pml_losses.TripletMarginLoss(margin=0.2),
                                   pml_miners.BatchHardMiner()),
    "triplet_soft_batch_hard": lambda: (
        losses.create("triplet", soft=True, miner="batch_hard"),
        pml_losses.TripletMarginLoss(margin=0.0, smooth_loss=True), pml_miners.BatchHardMiner()),
    **{f"triplet_margin_{kind}": (lambda kind=kind: (
        losses.create("triplet", margin=0.1, miner=_band(kind)["ours"]),
        pml_losses.TripletMarginLoss(margin=0.1), _band(kind)["theirs"]))
       for kind in ("all", "hard", "semihard")},
    "triplet_soft_semihard_band": lambda: (
        losses.create("triplet", margin=0.1, soft=True, miner=_band("semihard")["ours"]),
        pml_losses.TripletMarginLoss(margin=0.1, smooth_loss=True), _band("semihard")["theirs"]),
    "triplet_pair_miner": lambda: (
        losses.create("triplet", margin=0.1,
                      miner=miners.create("pair_margin", pos_margin=1.2, neg_margin=1.4)),
        pml_losses.TripletMarginLoss(margin=0.1),
        pml_miners.PairMarginMiner(pos_margin=1.2, neg_margin=1.4)),
    "multi_similarity": lambda: (losses.create("multi_similarity"),
                                 pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
                                 pml_miners.MultiSimilarityMiner(epsilon=0.1)),
    "multi_similarity_all_pairs": lambda: (
        losses.create("multi_similarity", miner=None, alpha=3, beta=40, base=0.6),
        pml_losses.MultiSimilarityLoss(alpha=3, beta=40, base=0.6), None),
    "circle_default": lambda: (losses.create("circle"),
                               pml_losses.CircleLoss(m=0.25, gamma=256), None),
    "circle_retrieval": lambda: (losses.create("circle", m=0.4, gamma=80),
                                 pml_losses.CircleLoss(), None),
    "lifted_structure": lambda: (losses.create("lifted_structure"),
                                 pml_losses.LiftedStructureLoss(), None),
    "generalized_lifted": lambda: (losses.create("generalized_lifted", neg_margin=0.7),
                                   pml_losses.GeneralizedLiftedStructureLoss(neg_margin=0.7),
                                   None),
    "snr_contrastive": lambda: (losses.create("snr_contrastive", neg_margin=0.9),
                                pml_losses.SignalToNoiseRatioContrastiveLoss(neg_margin=0.9),
                                None),
    "margin_batch_hard": lambda: (
        losses.create("margin", miner="batch_hard"),
        pml_losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=True),
        pml_miners.BatchHardMiner()),
    "margin_nu": lambda: (
        losses.create("margin", miner="batch_hard", nu=0.1, beta=1.0),
        pml_losses.MarginLoss(margin=0.2, beta=1.0, nu=0.1, learn_beta=True),
        pml_miners.BatchHardMiner()),
    "margin_per_class": lambda: (
        losses.create("margin", miner="batch_hard", per_class_beta=True, num_classes=6,
                      beta=1.0),
        pml_losses.MarginLoss(margin=0.2, beta=1.0, learn_beta=True, num_classes=6),
        pml_miners.BatchHardMiner()),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_parity_with_pml(case, dtype):
    ours, theirs, pml_miner = PARITY_CASES[case]()
    embeddings, labels = _batch(dtype=dtype)
    _assert_parity(ours, theirs, embeddings, labels, pml_miner)


def test_learnable_beta_gets_the_same_gradient_as_pml():
    embeddings, labels = _batch()
    chosen = pml_miners.TripletMarginMiner(margin=0.3)(embeddings, labels)
    ours = losses.create("margin", miner=lambda x, y: Triplets(*chosen), per_class_beta=True,
                         num_classes=6)
    theirs = pml_losses.MarginLoss(learn_beta=True, num_classes=6)
    ours(embeddings, labels).backward()
    theirs(embeddings, labels, chosen).backward()
    torch.testing.assert_close(ours.beta.grad.double(), theirs.beta.grad.double())
    assert ours.beta.grad.abs().sum() > 0


def test_loss_accepts_a_custom_triplet_miner():
    """Any callable returning Triplets works; margin loss then matches PML on those triplets."""
    embeddings, labels = _batch(16)
    anchor, positive, negative = pml_miners.TripletMarginMiner(margin=0.5)(embeddings, labels)
    chosen = (anchor[::3], positive[::3], negative[::3])
    ours = losses.create("margin", miner=lambda x, y: Triplets(*chosen))
    theirs = pml_losses.MarginLoss(learn_beta=True)
    value, grad = _value_and_grad(ours, embeddings, labels)
    expected, expected_grad = _value_and_grad(theirs, embeddings, labels, chosen)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-9)
    triplet = losses.create("triplet", miner=lambda x, y: Triplets(*chosen))
    _assert_parity(triplet, pml_losses.TripletMarginLoss(margin=0.2), embeddings, labels,
                   lambda x, y: chosen)


def _distances(embeddings):
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    return torch.cdist(unit, unit)


def test_triplet_hinge_equals_brute_force_on_every_valid_triplet():
    embeddings, labels = _batch(14, classes=4, seed=3)
    d = _distances(embeddings)
    terms = [max(0.0, float(d[a, p] - d[a, n]) + 0.3)
             for a, p, n in itertools.product(range(14), repeat=3)
             if a != p and labels[a] == labels[p] and labels[a] != labels[n]]
    nonzero = [t for t in terms if t > 0]
    loss = losses.create("triplet", margin=0.3)(embeddings, labels)
    assert float(loss) == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-10)
    soft = losses.create("triplet", margin=0.3, soft=True, chunk_elements=20)(embeddings, labels)
    brute_soft = [math.log1p(math.exp(float(d[a, p] - d[a, n]) + 0.3))
                  for a, p, n in itertools.product(range(14), repeat=3)
                  if a != p and labels[a] == labels[p] and labels[a] != labels[n]]
    assert float(soft) == pytest.approx(sum(brute_soft) / len(brute_soft), rel=1e-10)


def test_triplet_with_facenet_semihard_miner_is_default_margin_on_mined_triplets():
    embeddings, labels = _batch(16, seed=4)
    d = _distances(embeddings)
    anchor, positive, negative = miners.create("semihard")(embeddings, labels)
    terms = (d[anchor, positive] - d[anchor, negative] + 0.2).clamp_min(0)
    expected = terms[terms > 0].mean()
    loss = losses.create("triplet", miner="semihard")(embeddings, labels)
    assert float(loss) == pytest.approx(float(expected), rel=1e-10)


def test_lifted_structure_is_the_paper_formula():
    """Song et al. 2016 eq. 4 by brute force over unordered positive pairs."""
    embeddings, labels = _batch(12, classes=3, seed=5)
    d = _distances(embeddings)
    total, pairs = 0.0, 0
    for i, j in itertools.combinations(range(12), 2):
        if labels[i] != labels[j]:
            continue
        exponent_sum = sum(math.exp(1.0 - float(d[i, k])) for k in range(12)
                           if labels[k] != labels[i])
        exponent_sum += sum(math.exp(1.0 - float(d[j, k])) for k in range(12)
                            if labels[k] != labels[j])
        total += max(0.0, math.log(exponent_sum) + float(d[i, j])) ** 2
        pairs += 1
    loss = losses.create("lifted_structure")(embeddings, labels)
    assert float(loss) == pytest.approx(total / (2 * pairs), rel=1e-10)


def test_generalized_lifted_skips_anchors_without_positives_unlike_pml():
    """Hermans et al. 2017 eq. 6 per anchor with a positive; PML also charges the others.

    PML treats the empty positive log-sum-exp as 0, so an anchor without any positive adds
    ``[log sum_n exp(m - d_an)]_+`` and it divides by all B anchors. We average over the
    anchors the formula is defined for.
    """
    embeddings, labels = _batch(10, seed=6)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])  # anchors 8 and 9 are singletons
    d = _distances(embeddings)

    def lse(values):
        return math.log(sum(math.exp(v) for v in values))

    per_anchor, singleton_terms = [], []
    for a in range(10):
        negatives = [1.0 - float(d[a, n]) for n in range(10) if labels[n] != labels[a]]
        positives = [float(d[a, p]) for p in range(10) if p != a and labels[p] == labels[a]]
        if positives:
            per_anchor.append(max(0.0, lse(positives) + lse(negatives)))
        else:
            singleton_terms.append(max(0.0, lse(negatives)))
    ours = losses.create("generalized_lifted")(embeddings, labels)
    assert float(ours) == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-10)
    theirs = pml_losses.GeneralizedLiftedStructureLoss()(embeddings, labels)
    assert float(theirs) == pytest.approx((sum(per_anchor) + sum(singleton_terms)) / 10,
                                          rel=1e-10)
    assert float(theirs) != pytest.approx(float(ours), rel=1e-3)


def test_snr_distance_is_variance_ratio():
    x = torch.randn(6, 9, dtype=torch.float64)
    expected = torch.tensor([[float(torch.var(x[j] - x[i]) / torch.var(x[i])) for j in range(6)]
                             for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(snr_distance_matrix(x), expected, rtol=1e-10, atol=1e-12)


def test_snr_regularizer_adds_the_zero_mean_penalty():
    embeddings, labels = _batch(12, seed=7)
    plain = losses.create("snr_contrastive")(embeddings, labels)
    regularized = losses.create("snr_contrastive", regularization_weight=0.5)(embeddings, labels)
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    assert float(regularized - plain) == pytest.approx(0.5 * float(unit.sum(1).abs().mean()))


def test_margin_loss_over_all_pairs_is_brute_force():
    embeddings, labels = _batch(10, classes=3, seed=8)
    d = _distances(embeddings)
    terms = [max(0.0, 0.2 + (1 if labels[i] == labels[j] else -1) * (float(d[i, j]) - 1.2))
             for i, j in itertools.permutations(range(10), 2)]
    nonzero = [t for t in terms if t > 0]
    loss = losses.create("margin", miner=None)(embeddings, labels)
    assert float(loss.detach()) == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-7)


def test_margin_beta_is_a_fast_parameter_and_per_class_needs_num_classes():
    loss = losses.create("margin", num_classes=7, per_class_beta=True)
    assert loss.beta.shape == (7,) and losses.lr_multiplier(loss) == 1000.0
    assert losses.create("margin", num_classes=7).beta.shape == (1,)
    with pytest.raises(ValueError, match="num_classes"):
        losses.create("margin", per_class_beta=True)
    with pytest.raises(ValueError, match=r"labels in 0\.\.6"):
        loss(torch.randn(4, 3), torch.tensor([0, 0, 7, 7]))


def test_pair_losses_use_pair_masks_from_a_custom_miner():
    embeddings, labels = _batch(12, seed=9)
    positive, negative = miners.create("pair_margin", pos_margin=0.0, neg_margin=2.0)(
        embeddings, labels)
    only_one_negative = torch.zeros_like(negative)
    first = negative.nonzero()[0]
    only_one_negative[first[0], first[1]] = True
    loss = losses.create("contrastive", miner=lambda x, y: Pairs(positive, only_one_negative))
    d = _distances(embeddings)
    expected = d[positive].mean() + max(0.0, 1.0 - float(d[first[0], first[1]]))
    assert float(loss(embeddings, labels)) == pytest.approx(float(expected), rel=1e-10)


@pytest.mark.parametrize("name", sorted(set(FAMILY) - {"contrastive", "snr_contrastive"}))
def test_no_positive_pair_gives_zero_with_zero_gradient(name):
    embeddings = torch.randn(6, 8, requires_grad=True)
    value = losses.create(name)(embeddings, torch.arange(6))
    value.backward()
    assert float(value.detach()) == 0
    assert embeddings.grad is None or torch.equal(embeddings.grad, torch.zeros(6, 8))


@pytest.mark.parametrize("name", ["contrastive", "snr_contrastive"])
def test_contrastive_without_positives_still_pushes_negatives_apart(name):
    """Contrastive terms are per pair: with no positive pair the negative term alone remains."""
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8, dtype=torch.float64), dim=1)
    loss = losses.create(name, neg_margin=10.0)
    value = loss(embeddings.requires_grad_(True), torch.arange(6))
    reference = pml_losses.ContrastiveLoss(neg_margin=10.0) if name == "contrastive" else (
        pml_losses.SignalToNoiseRatioContrastiveLoss(neg_margin=10.0))
    assert float(value) == pytest.approx(float(reference(embeddings, torch.arange(6))), rel=1e-9)
    value.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0


# The shared separable problem starts with MAP@R 1 and every class pair already 0.1 apart
# in cosine similarity, so margin-based cases use margins that are still violated at start
# (a zero loss cannot decrease).
TRAIN_CASES = {
    "contrastive": {},
    "triplet": {"margin": 0.5},
    "triplet_semihard": {"miner": "semihard", "margin": 0.5},
    "triplet_soft_batch_hard": {"soft": True, "miner": "batch_hard"},
    "triplet_margin_miner": {"margin": 0.5, "miner": {"margin": 0.5}},
    "lifted_structure": {},
    "generalized_lifted": {},
    "margin": {},
    "margin_per_class": {"per_class_beta": True, "num_classes": 6},
    "multi_similarity": {"miner": None},
    "multi_similarity_miner": {"miner": {"epsilon": 0.5}},
    "snr_contrastive": {},
    "circle": {},
}


def _create(case: str) -> torch.nn.Module:
    name = next(n for n in sorted(FAMILY, key=len, reverse=True) if case.startswith(n))
    params = dict(TRAIN_CASES[case])
    if isinstance(params.get("miner"), dict):
        miner_name = "triplet_margin" if name == "triplet" else "multi_similarity"
        params["miner"] = miners.create(miner_name, **params["miner"])
    return losses.create(name, **params)


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_loss_trains(case, loss_checks):
    torch.manual_seed(0)
    loss_checks.trains(_create(case))


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_safe_under_bfloat16_and_degenerate_batches(case, loss_checks):
    torch.manual_seed(0)
    loss_checks.safe_under_bfloat16(_create(case))
    loss_checks.degenerate_batches_safe(_create(case))


def test_all_family_losses_are_registered_and_reject_bad_input():
    assert set(FAMILY) <= set(losses.names())
    for name in FAMILY:
        with pytest.raises(ValueError, match="one label per embedding"):
            losses.create(name)(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        losses.create("snr_contrastive")(torch.randn(4, 1), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(TypeError, match="miner must be"):
        losses.create("triplet", miner=3)
