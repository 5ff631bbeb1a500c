"""Cross-batch memory (XBM): queue semantics, parity with PML's CrossBatchMemory, state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from fairdml.losses import create

DIM = 8
BATCH = 16


def batches(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        raw = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 5, (BATCH,), generator=generator)
        yield raw.requires_grad_(True), labels


def value_and_grad(loss, raw, labels):
    value = loss(F.normalize(raw, dim=1), labels)
    (grad,) = torch.autograd.grad(value, raw)
    return value.detach(), grad


PML_WRAPPED = {
    "contrastive": (dict(), lambda: pml_losses.ContrastiveLoss()),
    "ntxent": (dict(temperature=0.1), lambda: pml_losses.NTXentLoss(temperature=0.1)),
    "supcon": (dict(temperature=0.1), lambda: pml_losses.SupConLoss(temperature=0.1)),
    "angular": (dict(alpha=40.0), lambda: pml_losses.AngularLoss(alpha=40)),
}


@pytest.mark.parametrize("name", sorted(PML_WRAPPED))
def test_memory_term_matches_pml_cross_batch_memory_through_wraparound(name):
    params, pml_factory = PML_WRAPPED[name]
    ours = create("cross_batch_memory", loss=name, loss_params=params, memory_size=40,
                  embedding_dim=DIM, batch_weight=0.0).double()
    theirs = pml_losses.CrossBatchMemory(pml_factory(), embedding_size=DIM, memory_size=40)
    theirs.embedding_memory = theirs.embedding_memory.double()
    for raw, labels in batches(5):  # 5 x 16 > 40: the queue wraps around twice
        ours_value, ours_grad = value_and_grad(ours, raw, labels)
        theirs_value, theirs_grad = value_and_grad(theirs, raw, labels)
        torch.testing.assert_close(ours_value, theirs_value, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-4, atol=1e-6)


def test_default_objective_is_batch_term_plus_memory_term():
    """Paper's code: L = L(batch, batch) + L(batch, memory incl. the batch, self excluded)."""
    loss = create("cross_batch_memory", loss="ntxent", memory_size=64, embedding_dim=DIM)
    plain = create("ntxent")
    stored, stored_labels = [], []
    for raw, labels in batches(3):
        x = F.normalize(raw.detach(), dim=1)
        stored.append(x)
        stored_labels.append(labels)
        references, reference_labels = torch.cat(stored), torch.cat(stored_labels)
        self_mask = torch.zeros(BATCH, len(reference_labels), dtype=torch.bool)
        self_mask[:, -BATCH:] = torch.eye(BATCH, dtype=torch.bool)
        expected = plain(x, labels) + plain(x, labels, ref_embeddings=references,
                                            ref_labels=reference_labels,
                                            ref_self_mask=self_mask)
        torch.testing.assert_close(loss(x, labels).double(), expected.double(),
                                   rtol=1e-5, atol=1e-6)


def test_queue_is_fifo_and_keeps_the_last_memory_size_samples():
    loss = create("cross_batch_memory", loss="contrastive", memory_size=40, embedding_dim=DIM)
    seen, seen_labels = [], []
    for raw, labels in batches(4):
        loss(raw, labels)
        seen.append(raw.detach().float())
        seen_labels.append(labels)
    # 64 samples went in; slots hold samples 24..63, slot i = sample (i - 64) mod 40 + 24.
    everything, all_labels = torch.cat(seen), torch.cat(seen_labels)
    slots = torch.arange(40)
    source = 24 + (slots - 64 % 40) % 40
    torch.testing.assert_close(loss.embedding_memory, everything[source])
    assert torch.equal(loss.label_memory, all_labels[source])
    assert int(loss.memory_count) == 40
    assert not loss.embedding_memory.requires_grad


def test_memory_survives_state_dict_round_trip():
    first = create("cross_batch_memory", loss="supcon", memory_size=48, embedding_dim=DIM)
    data = list(batches(3))
    for raw, labels in data[:2]:
        first(raw, labels)
    state = first.state_dict()
    assert {"embedding_memory", "label_memory", "memory_position", "memory_count",
            "step"} <= set(state)
    second = create("cross_batch_memory", loss="supcon", memory_size=48, embedding_dim=DIM)
    second.load_state_dict(state)
    raw, labels = data[2]
    torch.testing.assert_close(first(raw, labels), second(raw, labels))


def test_eval_mode_reads_but_does_not_write_the_memory():
    loss = create("cross_batch_memory", loss="ntxent", memory_size=48, embedding_dim=DIM)
    data = list(batches(2))
    loss(*data[0])
    before = loss.embedding_memory.clone(), int(loss.memory_count), int(loss.step)
    loss.eval()
    value = loss(*data[1])
    assert torch.isfinite(value)
    assert torch.equal(loss.embedding_memory, before[0])
    assert (int(loss.memory_count), int(loss.step)) == before[1:]


def test_start_step_delays_the_memory_term():
    loss = create("cross_batch_memory", loss="ntxent", memory_size=48, embedding_dim=DIM,
                  start_step=2)
    plain = create("ntxent")
    data = list(batches(3))
    for raw, labels in data[:2]:
        torch.testing.assert_close(loss(raw, labels), plain(raw, labels))
    assert int(loss.memory_count) == 0
    raw, labels = data[2]
    assert not torch.allclose(loss(raw, labels), plain(raw, labels))
    assert int(loss.memory_count) == BATCH


class ReferenceOnlyLoss(torch.nn.Module):
    """A loss with the plain reference form (no self mask): mean query-reference distance."""

    def forward(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        references = embeddings if ref_embeddings is None else ref_embeddings
        return torch.cdist(embeddings, references).mean()


def test_loss_without_self_mask_sees_the_memory_before_the_batch_is_added():
    loss = create("cross_batch_memory", loss=ReferenceOnlyLoss(), memory_size=48,
                  embedding_dim=DIM, batch_weight=0.0)
    data = list(batches(2))
    first = loss(*data[0])
    assert float(first.detach()) == 0.0  # empty memory: no memory term yet
    raw, labels = data[1]
    expected = torch.cdist(raw.float(), data[0][0].detach().float()).mean()
    torch.testing.assert_close(loss(raw, labels).float(), expected)
    assert int(loss.memory_count) == 2 * BATCH


@pytest.mark.parametrize("params, match", [
    (dict(loss="npairs"), "query/reference form"),
    (dict(loss="cross_batch_memory"), "wrap itself"),
    (dict(loss="contrastive", memory_size=0), "memory_size"),
    (dict(loss="contrastive", memory_weight=0.0, batch_weight=0.0), "not both 0"),
    (dict(loss="contrastive", start_step=-1), "start_step"),
    (dict(loss="contrastive", miner="batch_hard"), "miner"),
])
def test_bad_configuration_is_refused(params, match):
    params = {"memory_size": 32, "embedding_dim": DIM, **params}
    with pytest.raises(ValueError, match=match):
        create("cross_batch_memory", **params)


def test_bad_batches_are_refused():
    loss = create("cross_batch_memory", loss="ntxent", memory_size=8, embedding_dim=DIM)
    with pytest.raises(ValueError, match="larger than memory_size"):
        loss(torch.randn(9, DIM), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="dimension"):
        loss(torch.randn(4, DIM + 1), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("wrapped", ["contrastive", "ntxent"])
def test_shared_checks(wrapped, loss_checks):
    def build():
        return create("cross_batch_memory", loss=wrapped, memory_size=96,
                      embedding_dim=16)
    loss_checks.degenerate_batches_safe(build())
    loss_checks.safe_under_bfloat16(build())
    loss_checks.trains(build())


def test_wrapper_reports_the_wrapped_loss_lr_multiplier():
    from fairdml.losses import lr_multiplier

    wrapped = create("ntxent")
    wrapped.lr_multiplier = 10.0
    loss = create("cross_batch_memory", loss=wrapped, memory_size=32, embedding_dim=DIM)
    assert lr_multiplier(loss) == 10.0
    assert lr_multiplier(create("cross_batch_memory", loss="ntxent", memory_size=32,
                                embedding_dim=DIM)) == 1.0
