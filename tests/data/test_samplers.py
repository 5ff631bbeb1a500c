"""`ClassBalancedBatchSampler`: C x M batches, epoch coverage, determinism, rank shares."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairdml.data.samplers import ClassBalancedBatchSampler, class_balanced_batches


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def _check_composition(batches, labels, c, m):
    for batch in batches:
        assert len(batch) == c * m
        groups = np.asarray(labels)[np.asarray(batch)].reshape(c, m)
        assert (groups == groups[:, :1]).all()  # M samples of one class, adjacent
        assert len(set(groups[:, 0].tolist())) == c  # C distinct classes


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 25), min_size=2, max_size=25),
       c=st.integers(1, 6), m=st.integers(1, 5), seed=st.integers(0, 1000))
def test_every_sample_once_per_epoch_in_well_formed_batches(counts, c, m, seed):
    labels = _labels(counts)
    if len(counts) < c:
        with pytest.raises(ValueError, match="classes"):
            ClassBalancedBatchSampler(labels, c, m)
        return
    sampler = ClassBalancedBatchSampler(labels, c, m, seed=seed)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    _check_composition(batches, labels, c, m)
    seen = np.zeros(len(labels), dtype=int)
    np.add.at(seen, np.concatenate(batches), 1)
    assert (seen >= 1).all()
    chunks = -(-np.asarray(counts) // m)
    assert len(sampler) == max(chunks.max(), -(-chunks.sum() // c))


def test_no_repeats_within_a_class_group_when_the_class_is_large_enough():
    labels = _labels([5, 6, 7, 9, 4, 11])
    for batch in ClassBalancedBatchSampler(labels, 3, 4, seed=2):
        groups = np.asarray(batch).reshape(3, 4)
        assert all(len(set(group.tolist())) == 4 for group in groups)


def test_small_classes_are_sampled_with_replacement():
    labels = _labels([1, 2, 8, 8])
    sampler = ClassBalancedBatchSampler(labels, 2, 4, seed=0)
    groups = [group for batch in sampler for group in np.asarray(batch).reshape(2, 4)]
    singleton = [group for group in groups if labels[group[0]] == 0]
    assert singleton and all(group.tolist() == [0, 0, 0, 0] for group in singleton)
    pair = [group for group in groups if labels[group[0]] == 1]
    assert pair and all(set(group.tolist()) == {1, 2} for group in pair)


def test_epochs_are_deterministic_and_differ():
    labels = _labels([6] * 10)
    sampler = ClassBalancedBatchSampler(labels, 4, 3, seed=7)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    assert list(ClassBalancedBatchSampler(labels, 4, 3, seed=7)) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(ClassBalancedBatchSampler(labels, 4, 3, seed=8)) != epoch0


def test_classes_meet_many_other_classes_within_an_epoch():
    """Batches are not the same few classes travelling together."""
    labels = _labels([40] * 32)
    sampler = ClassBalancedBatchSampler(labels, 8, 4, seed=0)
    partners = {k: set() for k in range(32)}
    for batch in sampler:
        classes = set(labels[batch].tolist())
        for k in classes:
            partners[k] |= classes - {k}
    assert min(len(p) for p in partners.values()) >= 15


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_equal_shares(drop_last):
    labels = _labels([9, 7, 12, 5, 8, 10, 6, 11])  # 20 chunks of 4: 10 batches of 2 x 4
    total = ClassBalancedBatchSampler(labels, 2, 4, seed=1).epoch_batches()
    shares = []
    for rank in range(3):
        sampler = ClassBalancedBatchSampler(labels, 2, 4, seed=1, num_replicas=3, rank=rank,
                                            drop_last=drop_last)
        sampler.set_epoch(0)
        shares.append([tuple(batch) for batch in sampler])
        assert len(shares[-1]) == len(sampler)
    assert len({len(share) for share in shares}) == 1
    all_batches = [batch for share in shares for batch in share]
    full = [tuple(batch) for batch in total.tolist()]
    if drop_last:
        assert len(shares[0]) == len(full) // 3
        assert len(set(all_batches)) == len(all_batches)  # disjoint
        assert set(all_batches) <= set(full)
    else:
        assert len(shares[0]) == -(-len(full) // 3)
        assert set(all_batches) == set(full)  # all covered, the first ones repeated


def test_sampler_accepts_string_labels():
    labels = np.array(["x", "y", "z", "x", "y", "z", "x", "y"], dtype=object)
    batches = list(ClassBalancedBatchSampler(labels, 2, 2))
    _check_composition(batches, labels, 2, 2)


def test_sampler_errors():
    labels = _labels([4, 4, 4])
    with pytest.raises(ValueError, match="batch_size 10"):
        ClassBalancedBatchSampler(labels, 2, 4, batch_size=10)
    assert ClassBalancedBatchSampler(labels, 2, 4, batch_size=8).batch_size == 8
    with pytest.raises(ValueError, match="only 3 classes"):
        ClassBalancedBatchSampler(labels, 4, 2)
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedBatchSampler(labels, 2, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="samples_per_class"):
        ClassBalancedBatchSampler(labels, 2, 0)
    with pytest.raises(ValueError, match="replicas"):
        ClassBalancedBatchSampler(labels, 3, 4, num_replicas=4)


def test_functional_core_on_an_imbalanced_set():
    labels = _labels([40, 2, 2, 2])  # one class dominates: it is in every batch
    batches = class_balanced_batches(labels, 2, 2, np.random.default_rng(0))
    assert batches.shape == (20, 4)
    assert all(0 in labels[batch].tolist() for batch in batches)
    _check_composition(batches, labels, 2, 2)
