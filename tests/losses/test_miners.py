"""Miners: same selections as pytorch-metric-learning where defined alike, else brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners

from fairdml.losses import miners
from fairdml.losses.miners import Pairs, TripletBand, Triplets, to_pairs


def _batch(n: int = 24, dim: int = 8, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=generator)
    labels[-1] = classes  # a singleton class
    return embeddings, labels


def _distances(embeddings: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    return torch.cdist(unit, unit)


def _triplet_set(triplets) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in triplets)))


def _pair_sets(mined) -> tuple[set, set]:
    if isinstance(mined, Pairs):
        return (set(map(tuple, mined.positive.nonzero().tolist())),
                set(map(tuple, mined.negative.nonzero().tolist())))
    a1, p, a2, n = (t.tolist() for t in mined)
    return set(zip(a1, p)), set(zip(a2, n))


def _band_triplets(band: TripletBand, d: torch.Tensor) -> set[tuple[int, int, int]]:
    """Explicit triplets of a band, by looping (the oracle)."""
    n = d.shape[0]
    return {(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
            if band.positive[a, p] and band.negative[a, q]
            and band.low < float(d[a, q] - d[a, p]) <= band.high}


def test_all_miners_are_registered():
    assert set(miners.names()) >= {"batch_hard", "semihard", "triplet_margin",
                                   "distance_weighted", "multi_similarity", "pair_margin"}
    with pytest.raises(KeyError, match="batch_hard"):
        miners.create("no_such_miner")


def test_batch_hard_matches_pml():
    embeddings, labels = _batch()
    ours = miners.create("batch_hard")(embeddings, labels)
    assert isinstance(ours, Triplets)
    theirs = pml_miners.BatchHardMiner()(embeddings, labels)
    assert _triplet_set(ours) == _triplet_set(theirs)
    assert labels[-1].item() not in labels[ours.anchor].tolist()


def test_semihard_picks_the_closest_farther_negative_per_positive_pair():
    embeddings, labels = _batch()
    d = _distances(embeddings)
    ours = miners.create("semihard")(embeddings, labels)
    expected = set()
    for a, p in itertools.product(range(len(labels)), repeat=2):
        if a == p or labels[a] != labels[p]:
            continue
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        farther = [n for n in negatives if d[a, n] > d[a, p]]
        chosen = (min(farther, key=lambda n: float(d[a, n])) if farther
                  else max(negatives, key=lambda n: float(d[a, n])))
        expected.add((a, p, chosen))
    assert _triplet_set(ours) == expected


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_triplet_margin_band_is_pml_selection(kind):
    embeddings, labels = _batch(16)
    band = miners.create("triplet_margin", margin=0.1, type_of_triplets=kind)(embeddings, labels)
    assert isinstance(band, TripletBand)
    explicit = _band_triplets(band, _distances(embeddings))
    theirs = pml_miners.TripletMarginMiner(margin=0.1, type_of_triplets=kind)(embeddings, labels)
    assert explicit == _triplet_set(theirs)
    assert explicit, "the test batch should contain triplets of every type"


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_band_to_pairs_keeps_exactly_the_pairs_of_its_triplets(kind):
    embeddings, labels = _batch(16, seed=2)
    band = miners.create("triplet_margin", margin=0.1, type_of_triplets=kind)(embeddings, labels)
    explicit = _band_triplets(band, _distances(embeddings))
    positive, negative = _pair_sets(to_pairs(band, len(labels)))
    assert positive == {(a, p) for a, p, _ in explicit}
    assert negative == {(a, n) for a, _, n in explicit}


def test_triplets_to_pairs_masks():
    triplets = Triplets(torch.tensor([0, 0, 2]), torch.tensor([1, 1, 3]), torch.tensor([2, 3, 0]))
    positive, negative = _pair_sets(to_pairs(triplets, 4))
    assert positive == {(0, 1), (2, 3)} and negative == {(0, 2), (0, 3), (2, 0)}
    with pytest.raises(TypeError, match="Pairs, Triplets or TripletBand"):
        to_pairs((1, 2), 4)


def test_multi_similarity_miner_matches_pml():
    embeddings, labels = _batch(32, seed=3)
    ours = miners.create("multi_similarity", epsilon=0.1)(embeddings, labels)
    theirs = pml_miners.MultiSimilarityMiner(epsilon=0.1)(embeddings, labels)
    assert _pair_sets(ours) == _pair_sets(theirs)
    assert ours.positive.any() and ours.negative.any()


def test_pair_margin_miner_matches_pml():
    embeddings, labels = _batch(20, seed=4)
    ours = miners.create("pair_margin", pos_margin=0.9, neg_margin=1.3)(embeddings, labels)
    theirs = pml_miners.PairMarginMiner(pos_margin=0.9, neg_margin=1.3)(embeddings, labels)
    assert _pair_sets(ours) == _pair_sets(theirs)
    assert ours.positive.any() and ours.negative.any()


def test_distance_weighted_weights_follow_the_inverse_sphere_density():
    embeddings, labels = _batch(12, dim=6, seed=5)
    miner = miners.create("distance_weighted", cutoff=0.5, nonzero_loss_cutoff=1.4)
    weights = miner.negative_weights(embeddings, labels)
    d, dim = _distances(embeddings), 6
    for a in range(len(labels)):
        expected = torch.zeros(len(labels), dtype=torch.float64)
        for n in range(len(labels)):
            if labels[n] != labels[a] and d[a, n] < 1.4:
                x = max(float(d[a, n]), 0.5)
                expected[n] = x ** (2 - dim) * (1 - x * x / 4) ** ((3 - dim) / 2)
        if expected.sum() == 0:
            expected = (labels != labels[a]).double()
        got = weights[a] / weights[a].sum()
        assert torch.allclose(got, expected / expected.sum(), atol=1e-9), a


def test_distance_weighted_sampling_is_valid_and_reproducible():
    embeddings, labels = _batch(40, dim=16, seed=6)
    miner = miners.create("distance_weighted")
    torch.manual_seed(11)
    first = miner(embeddings, labels)
    torch.manual_seed(11)
    second = miner(embeddings, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with_generator = [miners.create("distance_weighted",
                                    generator=torch.Generator().manual_seed(3))(embeddings, labels)
                      for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*with_generator))
    anchor, positive, negative = first
    assert len(anchor) == int(sum(((labels == c).sum() * ((labels == c).sum() - 1))
                                  for c in labels.unique()))
    assert (labels[anchor] == labels[positive]).all() and (anchor != positive).all()
    assert (labels[anchor] != labels[negative]).all()


def test_miners_return_no_graph_and_reject_bad_input():
    embeddings, labels = _batch()
    embeddings.requires_grad_(True)
    for name in miners.names():
        mined = miners.create(name)(embeddings, labels)
        assert not any(t.requires_grad for t in mined if isinstance(t, torch.Tensor))
        with pytest.raises(ValueError, match="one label per embedding"):
            miners.create(name)(embeddings, labels[:-1])
    with pytest.raises(ValueError, match="type_of_triplets"):
        miners.create("triplet_margin", type_of_triplets="medium")
    with pytest.raises(ValueError, match="cutoff"):
        miners.create("distance_weighted", cutoff=1.5)
    with pytest.raises(ValueError, match="margin must be finite"):
        miners.create("triplet_margin", margin=math.inf)


def test_miners_handle_batches_without_positives():
    embeddings, labels = torch.randn(5, 4), torch.arange(5)
    for name in miners.names():
        mined = miners.create(name)(embeddings, labels)
        if isinstance(mined, Triplets):
            assert len(mined.anchor) == 0
        else:
            assert not to_pairs(mined, 5).positive.any()
