"""Ranking / AP-surrogate losses: paper formulas by brute force, PML parity, shared checks."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses

from fairdml.losses import create
from fairdml.losses.ranking import similarity_mixup, supap_negative_step

RANKING_LOSSES = ("histogram", "fastap", "ranked_list", "smooth_ap", "roadmap", "recall_at_k")


def batch(num_classes: int = 3, per_class: int = 4, dim: int = 8, seed: int = 0,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    centres = torch.randn(num_classes, dim, generator=generator, dtype=dtype)
    embeddings = centres[labels] + 1.5 * torch.randn(len(labels), dim, generator=generator,
                                                     dtype=dtype)
    return embeddings, labels


def value_and_grad(loss, embeddings, labels):
    x = embeddings.clone().requires_grad_(True)
    value = loss(x, labels)
    value.backward()
    return value.detach(), x.grad


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def assert_close(actual, expected, rtol=1e-4, atol=1e-9):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- brute-force oracles


def histogram_bruteforce(embeddings, labels, num_bins):
    x = unit(embeddings)
    delta = 2.0 / num_bins
    positive = [0.0] * (num_bins + 1)
    negative = [0.0] * (num_bins + 1)
    n = len(labels)
    for i in range(n):
        for j in range(i + 1, n):
            s = x[i] @ x[j]
            target = positive if labels[i] == labels[j] else negative
            for r in range(num_bins + 1):
                node = -1.0 + r * delta
                target[r] = target[r] + torch.clamp(1 - torch.abs(s - node) / delta, min=0)
    total_pos, total_neg = sum(positive), sum(negative)
    loss, cumulative = 0.0, 0.0
    for r in range(num_bins + 1):
        cumulative = cumulative + positive[r] / total_pos
        loss = loss + negative[r] / total_neg * cumulative
    return loss


def fastap_bruteforce(embeddings, labels, num_bins=10):
    x = unit(embeddings)
    delta = 4.0 / num_bins
    values = []
    for q in range(len(labels)):
        pos_hist = [0.0] * (num_bins + 1)
        all_hist = [0.0] * (num_bins + 1)
        for j in range(len(labels)):
            if j == q:
                continue
            d = ((x[q] - x[j]) ** 2).sum()
            for node in range(num_bins + 1):
                pulse = torch.clamp(1 - torch.abs(d - node * delta) / delta, min=0)
                all_hist[node] = all_hist[node] + pulse
                if labels[j] == labels[q]:
                    pos_hist[node] = pos_hist[node] + pulse
        n_pos = int((labels == labels[q]).sum()) - 1
        if n_pos == 0:
            continue
        ap, cum_pos, cum_all = 0.0, 0.0, 0.0
        for node in range(num_bins + 1):
            cum_pos = cum_pos + pos_hist[node]
            cum_all = cum_all + all_hist[node]
            if float(cum_all) > 0:
                ap = ap + pos_hist[node] * cum_pos / cum_all
        values.append(ap / n_pos)
    return 1 - sum(values) / len(values)


def ranked_list_bruteforce(embeddings, labels, alpha=1.2, margin=0.4, tn=10.0, lam=1.0):
    x = unit(embeddings)
    total = 0.0
    n = len(labels)
    for q in range(n):
        pos_terms, neg_terms, neg_weights = [], [], []
        for j in range(n):
            if j == q:
                continue
            d = torch.linalg.norm(x[q] - x[j])
            if labels[j] == labels[q] and d > alpha - margin:
                pos_terms.append(d - (alpha - margin))
            if labels[j] != labels[q] and d < alpha:
                neg_weights.append(torch.exp(tn * (alpha - d)))
                neg_terms.append(alpha - d)
        loss_p = sum(pos_terms) / len(pos_terms) if pos_terms else 0.0
        loss_n = (sum(w * t for w, t in zip(neg_weights, neg_terms)) / sum(neg_weights)
                  if neg_terms else 0.0)
        total = total + loss_p + lam * loss_n
    return total / n


def smooth_ap_bruteforce(embeddings, labels, temperature=0.01, include_query=False):
    """Paper formula; ``include_query`` reproduces PML / the authors' code."""
    x = unit(embeddings)
    s = x @ x.T
    n = len(labels)
    values = []
    for q in range(n):
        gallery = [j for j in range(n) if include_query or j != q]
        positives = [j for j in gallery if labels[j] == labels[q]]
        if not positives:
            continue
        ap = 0.0
        for i in positives:
            rank_all = 1 + sum(torch.sigmoid((s[q, j] - s[q, i]) / temperature)
                               for j in gallery if j != i)
            rank_pos = 1 + sum(torch.sigmoid((s[q, j] - s[q, i]) / temperature)
                               for j in positives if j != i)
            ap = ap + rank_pos / rank_all
        values.append(ap / len(positives))
    return 1 - sum(values) / len(values)


def supap_bruteforce(embeddings, labels, temperature=0.01, slope=100.0, offset=1.44,
                     margin=0.05, exact=False):
    x = unit(embeddings)
    s = x @ x.T
    n = len(labels)
    values = []
    for q in range(n):
        positives = [j for j in range(n) if j != q and labels[j] == labels[q]]
        negatives = [j for j in range(n) if labels[j] != labels[q]]
        if not positives:
            continue
        ap = 0.0
        for p in positives:
            rank_pos = 1 + sum(float(s[q, j] >= s[q, p]) for j in positives if j != p)
            if exact:
                rank_neg = sum(float(s[q, j] > s[q, p]) for j in negatives)
            else:
                rank_neg = 0.0
                for j in negatives:
                    t = s[q, j] - s[q, p]
                    if t <= 0:
                        h = torch.sigmoid(t / temperature)
                    elif t <= margin:
                        h = 0.5 + torch.sigmoid(t / temperature)
                    else:
                        h = slope * t + offset
                    rank_neg = rank_neg + h
            ap = ap + rank_pos / (rank_pos + rank_neg)
        values.append(ap / len(positives))
    return 1 - sum(values) / len(values)


def recall_at_k_bruteforce(x, labels, ks=(1, 2, 4, 8, 16), k_temperatures=None,
                           temperature=0.01):
    """Paper formula on already prepared (normalised or mixed) embeddings."""
    k_temperatures = k_temperatures or [float(k) for k in ks]
    s = x @ x.T
    n = len(labels)
    values = []
    for q in range(n):
        positives = [j for j in range(n) if j != q and labels[j] == labels[q]]
        if not positives:
            continue
        ranks = {}
        for p in positives:
            ranks[p] = 1 + sum(torch.sigmoid((s[q, z] - s[q, p]) / temperature)
                               for z in range(n) if z not in (q, p))
        recall = 0.0
        for k, tk in zip(ks, k_temperatures):
            k = min(k, n - 1)
            hits = sum(torch.sigmoid((k - ranks[p]) / tk) for p in positives)
            recall = recall + torch.clamp(hits, max=k) / min(k, len(positives))
        values.append(recall / len(ks))
    return 1 - sum(values) / len(values)


# ---------------------------------------------------------------- shared checks


# The shared problem's seed 0 starts with a perfect ranking (map@r = 1), where a rank loss
# such as the histogram loss is exactly 0 with nothing to learn; seed 3 starts at 0.96.
TRAIN_SEED = 3


@pytest.mark.parametrize("name", RANKING_LOSSES)
def test_loss_trains(name, loss_checks):
    loss_checks.trains(create(name), seed=TRAIN_SEED)


def test_recall_at_k_with_simix_trains(loss_checks):
    """SiMix on a noisy version of the shared problem (map@r 0.49 at the start).

    On the shared problem itself (map@r 0.96 at the start, 8 per class) the 28 mixtures per
    class fill every top-16 list, the surrogate no longer sees the real positives' order
    and map@r drifts down while recall@1 stays 1: RS@k optimises recall@k, not map@r.
    """
    torch.manual_seed(0)
    inputs, labels = loss_checks.problem(0)
    inputs = inputs + 3.0 * torch.randn_like(inputs)
    embedder = torch.nn.Linear(inputs.shape[1], 16)
    with torch.no_grad():
        embedder.weight.mul_(0.05)
    loss = create("recall_at_k", simix=True)
    optimiser = torch.optim.Adam(embedder.parameters(), lr=0.01)

    def embed():
        return unit(embedder(inputs))

    def recall_at_1(x):
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)
        return float((labels[similarity.argmax(dim=1)] == labels).double().mean())

    with torch.no_grad():
        map_before, recall_before = loss_checks.map_at_r(embed(), labels), recall_at_1(embed())
        loss_before = float(loss(embed(), labels))
    for _ in range(40):
        optimiser.zero_grad()
        loss(embed(), labels).backward()
        optimiser.step()
    with torch.no_grad():
        map_after, recall_after = loss_checks.map_at_r(embed(), labels), recall_at_1(embed())
        loss_after = float(loss(embed(), labels))
    assert loss_after < loss_before
    assert map_after > map_before + 0.2
    assert recall_after > recall_before + 0.1


@pytest.mark.parametrize("name", RANKING_LOSSES)
def test_safe_under_bfloat16(name, loss_checks):
    loss_checks.safe_under_bfloat16(create(name))


@pytest.mark.parametrize("name", RANKING_LOSSES)
def test_degenerate_batches_safe(name, loss_checks):
    loss_checks.degenerate_batches_safe(create(name))


@pytest.mark.parametrize("name", [n for n in RANKING_LOSSES if n != "ranked_list"])
def test_no_positive_pair_gives_zero_with_zero_gradient(name):
    embeddings, _ = batch()
    value, grad = value_and_grad(create(name), embeddings, torch.arange(len(embeddings)))
    assert float(value) == 0.0
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("name", RANKING_LOSSES)
def test_bad_shapes_are_refused(name):
    with pytest.raises(ValueError, match="labels"):
        create(name)(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("name,params", [
    ("histogram", {"num_bins": 0}), ("fastap", {"num_bins": -1}),
    ("ranked_list", {"margin": 2.0, "alpha": 1.0}), ("smooth_ap", {"temperature": 0}),
    ("smooth_ap", {"chunk_size": 0}), ("roadmap", {"offset": 0.5}),
    ("roadmap", {"calibration_weight": 2.0}), ("recall_at_k", {"ks": (0, 2)}),
    ("recall_at_k", {"ks": (1, 2), "k_temperatures": (1.0,)}),
])
def test_bad_parameters_are_refused(name, params):
    with pytest.raises(ValueError):
        create(name, **params)


# ---------------------------------------------------------------- histogram


def test_histogram_matches_paper_bruteforce():
    embeddings, labels = batch(per_class=3, dim=5)
    loss = create("histogram", num_bins=20)
    value, grad = value_and_grad(loss, embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    expected = histogram_bruteforce(x, labels, 20)
    expected.backward()
    assert_close(value, expected.detach(), rtol=1e-9)
    assert_close(grad, x.grad, rtol=1e-9)


@pytest.mark.parametrize("num_bins", [100, 25])
def test_histogram_parity_with_pml(num_bins):
    embeddings, labels = batch(num_classes=4, per_class=4)
    ours = value_and_grad(create("histogram", num_bins=num_bins), embeddings, labels)
    theirs = value_and_grad(pml_losses.HistogramLoss(n_bins=num_bins), embeddings, labels)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


def test_histogram_similarity_of_exactly_one_is_safe():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    value, grad = value_and_grad(create("histogram"), embeddings, torch.tensor([0, 0, 1, 1]))
    assert float(value) == 0.0 and torch.isfinite(grad).all()


# ---------------------------------------------------------------- fastap


def test_fastap_matches_paper_bruteforce_and_pml():
    embeddings, labels = batch(num_classes=3, per_class=4)
    ours = value_and_grad(create("fastap"), embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    expected = fastap_bruteforce(x, labels)
    expected.backward()
    assert_close(ours[0], expected.detach(), rtol=1e-9)
    assert_close(ours[1], x.grad, rtol=1e-7)
    theirs = value_and_grad(pml_losses.FastAPLoss(num_bins=10), embeddings, labels)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


def test_fastap_parity_with_pml_with_singletons_and_other_bins():
    embeddings, labels = batch(num_classes=5, per_class=3, dim=6, seed=3)
    labels = labels.clone()
    labels[0] = 99  # a singleton: no positive, still a negative for the others
    ours = value_and_grad(create("fastap", num_bins=7), embeddings, labels)
    theirs = value_and_grad(pml_losses.FastAPLoss(num_bins=7), embeddings, labels)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


# ---------------------------------------------------------------- ranked list


def test_ranked_list_matches_paper_bruteforce():
    embeddings, labels = batch(num_classes=3, per_class=4, seed=2)
    ours = value_and_grad(create("ranked_list", negative_weight=0.7), embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    expected = ranked_list_bruteforce(x, labels, lam=0.7)
    expected.backward()
    assert_close(ours[0], expected.detach(), rtol=1e-9)
    assert_close(ours[1], x.grad, rtol=1e-7)


def test_ranked_list_without_positives_keeps_only_its_negative_term():
    """RLL's negative term pushes each query's negatives beyond alpha whether or not the
    query has a positive (as in the paper and PML): a batch of singletons still learns."""
    embeddings, _ = batch(seed=2)
    labels = torch.arange(len(embeddings))
    value, grad = value_and_grad(create("ranked_list"), embeddings, labels)
    assert_close(value, ranked_list_bruteforce(embeddings, labels), rtol=1e-9)
    assert torch.isfinite(grad).all()
    alone = value_and_grad(create("ranked_list", negative_weight=0.0), embeddings, labels)
    assert float(alone[0]) == 0.0 and torch.count_nonzero(alone[1]) == 0


@pytest.mark.parametrize("negative_weight", [1.0, 0.5])
def test_ranked_list_equals_rescaled_pml(negative_weight):
    """PML: (1 - imbalance) L_P + imbalance L_N, and 1e-5 added per pair to weight sums."""
    embeddings, labels = batch(num_classes=4, per_class=3, seed=5)
    ours = value_and_grad(create("ranked_list", negative_weight=negative_weight),
                          embeddings, labels)
    imbalance = negative_weight / (1 + negative_weight)
    pml = pml_losses.RankedListLoss(margin=0.4, Tn=10, imbalance=imbalance, alpha=1.2)
    theirs = value_and_grad(pml, embeddings, labels)
    scale = 1 + negative_weight
    # The 1e-5-per-pair term shifts PML by ~ batch * 1e-5 / |P*| relative: rtol 3e-4.
    assert_close(ours[0], scale * theirs[0], rtol=3e-4)
    assert_close(ours[1], scale * theirs[1], rtol=3e-4, atol=1e-6)


# ---------------------------------------------------------------- smooth-AP


def test_smooth_ap_matches_paper_bruteforce_on_unequal_classes():
    embeddings, _ = batch(num_classes=3, per_class=4, seed=4)
    labels = torch.tensor([2, 0, 0, 1, 2, 1, 1, 1, 0, 5, 2, 1])
    ours = value_and_grad(create("smooth_ap", temperature=0.05), embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    expected = smooth_ap_bruteforce(x, labels, temperature=0.05)
    expected.backward()
    assert_close(ours[0], expected.detach(), rtol=1e-9)
    assert_close(ours[1], x.grad, rtol=1e-7, atol=1e-12)


def test_smooth_ap_differs_from_pml_only_by_ranking_the_query_itself():
    """PML (like the authors' code) puts the query in its own ranked list as a positive.

    PML also needs sorted, equally sized classes, and (see the next test) as many samples
    per class as there are classes: 4 classes x 4 samples here.
    """
    embeddings, labels = batch(num_classes=4, per_class=4, seed=6)
    pml_value, pml_grad = value_and_grad(pml_losses.SmoothAPLoss(temperature=0.01),
                                         embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    with_query = smooth_ap_bruteforce(x, labels, include_query=True)
    with_query.backward()
    assert_close(pml_value, with_query.detach())
    assert_close(pml_grad, x.grad, atol=1e-7)
    ours = value_and_grad(create("smooth_ap"), embeddings, labels)
    assert_close(ours[0], smooth_ap_bruteforce(embeddings, labels), rtol=1e-9)
    assert abs(float(ours[0]) - float(pml_value)) > 1e-3


def test_pml_smooth_ap_groups_positives_wrongly_when_classes_differ_from_class_size():
    """PML 2.9.0 reshapes the batch into groups of ``num_classes`` consecutive items, which
    are the classes only when classes and samples per class are equally many: with 3
    classes of 4 it matches neither definition, while fairdml follows the paper."""
    embeddings, labels = batch(num_classes=3, per_class=4, seed=6)
    pml_value = pml_losses.SmoothAPLoss(temperature=0.01)(embeddings, labels)
    pml_groups = torch.arange(len(labels)) // 3  # groups of num_classes = 3 items
    assert not torch.equal(pml_groups, labels)
    assert_close(pml_value, smooth_ap_bruteforce(embeddings, pml_groups, include_query=True))
    ours = create("smooth_ap")(embeddings, labels)
    assert_close(ours, smooth_ap_bruteforce(embeddings, labels), rtol=1e-9)


def test_smooth_ap_approaches_exact_ap_at_low_temperature():
    embeddings, labels = batch(seed=7)
    x = unit(embeddings)
    similarity = x @ x.T
    exact = []
    for q in range(len(labels)):
        order = [j for j in torch.argsort(similarity[q], descending=True).tolist() if j != q]
        hits = [float(labels[j] == labels[q]) for j in order]
        precision = [sum(hits[: i + 1]) / (i + 1) for i in range(len(hits))]
        exact.append(sum(p * h for p, h in zip(precision, hits)) / sum(hits))
    value = create("smooth_ap", temperature=1e-5)(embeddings, labels)
    assert math.isclose(float(value), 1 - sum(exact) / len(exact), rel_tol=1e-3)


# ---------------------------------------------------------------- roadmap


def test_supap_matches_bruteforce():
    embeddings, labels = batch(num_classes=3, per_class=4, seed=8)
    loss = create("roadmap", calibration_weight=0.0)
    ours = value_and_grad(loss, embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    expected = supap_bruteforce(x, labels)
    expected.backward()
    assert_close(ours[0], expected.detach(), rtol=1e-9)
    assert_close(ours[1], x.grad, rtol=1e-7, atol=1e-12)


def test_supap_bounds_the_ap_loss_from_above():
    for seed in range(5):
        embeddings, labels = batch(num_classes=3, per_class=4, seed=seed)
        supap = float(create("roadmap", calibration_weight=0.0)(embeddings, labels))
        assert supap >= float(supap_bruteforce(embeddings, labels, exact=True)) - 1e-12


def test_supap_negative_step_is_an_upper_bound_of_the_step():
    t = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    h = supap_negative_step(t, 0.01, 100.0, 1.44, 0.05)
    assert torch.all(h >= (t > 0).double())
    assert torch.all(h[t > 0.05] == 100.0 * t[t > 0.05] + 1.44)


def test_roadmap_calibration_equals_pml_contrastive_on_similarities():
    embeddings, labels = batch(num_classes=4, per_class=3, seed=9)
    ours = value_and_grad(create("roadmap", calibration_weight=1.0), embeddings, labels)
    pml = pml_losses.ContrastiveLoss(pos_margin=0.9, neg_margin=0.6,
                                     distance=pml_distances.CosineSimilarity())
    theirs = value_and_grad(pml, embeddings, labels)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


def test_roadmap_is_the_weighted_sum_of_its_parts():
    embeddings, labels = batch(seed=10)
    supap = create("roadmap", calibration_weight=0.0)(embeddings, labels)
    calibration = create("roadmap", calibration_weight=1.0)(embeddings, labels)
    both = create("roadmap", calibration_weight=0.3)(embeddings, labels)
    assert_close(both, 0.7 * supap + 0.3 * calibration, rtol=1e-12)


# ---------------------------------------------------------------- recall@k


def test_recall_at_k_matches_paper_bruteforce():
    embeddings, _ = batch(num_classes=3, per_class=4, seed=11)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 1])
    loss = create("recall_at_k", ks=(1, 2, 4, 16), rank_temperature=0.05)
    ours = value_and_grad(loss, embeddings, labels)
    x = embeddings.clone().requires_grad_(True)
    expected = recall_at_k_bruteforce(unit(x), labels, ks=(1, 2, 4, 16), temperature=0.05)
    expected.backward()
    assert_close(ours[0], expected.detach(), rtol=1e-9)
    assert_close(ours[1], x.grad, rtol=1e-7, atol=1e-12)


def test_simix_adds_one_mixture_per_same_class_pair():
    embeddings, _ = batch(num_classes=2, per_class=3)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    x = unit(embeddings)
    mixed, mixed_labels = similarity_mixup(x, labels, torch.Generator().manual_seed(0))
    assert len(mixed) == 6 + 3 + 1
    assert mixed_labels[6:].tolist() == [0, 0, 0, 1]
    # Each mixture lies on the segment between its two parents: its similarity to any
    # item is the same convex combination of the parents' similarities.
    a = ((mixed[6] - x[1]) @ (x[0] - x[1]) / ((x[0] - x[1]) @ (x[0] - x[1]))).item()
    assert 0.0 <= a <= 1.0
    assert_close(mixed[6] @ x[5], a * (x[0] @ x[5]) + (1 - a) * (x[1] @ x[5]), rtol=1e-9)


def test_recall_at_k_with_simix_matches_bruteforce_on_the_mixed_batch():
    embeddings, labels = batch(num_classes=3, per_class=3, seed=12)
    torch.manual_seed(5)
    value = create("recall_at_k", simix=True)(embeddings, labels)
    torch.manual_seed(5)
    mixed, mixed_labels = similarity_mixup(unit(embeddings), labels)
    assert_close(value, recall_at_k_bruteforce(mixed, mixed_labels), rtol=1e-9)


@pytest.mark.parametrize("name", ["smooth_ap", "roadmap", "recall_at_k"])
def test_chunked_computation_gives_the_same_value_and_gradient(name):
    embeddings, labels = batch(num_classes=4, per_class=5, seed=13)
    whole = value_and_grad(create(name), embeddings, labels)
    chunked = value_and_grad(create(name, chunk_size=3), embeddings, labels)
    assert_close(chunked[0], whole[0], rtol=1e-12)
    assert_close(chunked[1], whole[1], rtol=1e-10, atol=1e-14)
