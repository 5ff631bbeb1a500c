"""Requirements shared by the losses with learnable class weights (proxy and classification
families): they train, are safe under bfloat16 and on degenerate batches, compute in float32
under autocast and for half-precision embeddings."""

import pytest
import torch

from fairdml.losses import create

PROXY_LOSSES = ("proxy_anchor", "proxy_nca", "proxy_nca_pp", "soft_triple")
CLASSIFICATION_LOSSES = ("normalized_softmax", "cosface", "arcface", "subcenter_arcface")
CLASS_WEIGHT_LOSSES = PROXY_LOSSES + CLASSIFICATION_LOSSES
NUM_CLASSES = 7
DIM = 12


def batch(dtype: torch.dtype, seed: int = 0, size: int = 20):
    """A batch where class 6 is absent and classes 0 and 5 are present."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(size, DIM, generator=generator, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES - 1, (size,), generator=generator)
    labels[:3] = torch.tensor([0, 0, 5])
    return embeddings, labels


@pytest.mark.parametrize("name", CLASS_WEIGHT_LOSSES)
def test_loss_trains(name, loss_checks):
    torch.manual_seed(0)
    loss_checks.trains(create(name, num_classes=6, embedding_dim=16))


@pytest.mark.parametrize("name", CLASS_WEIGHT_LOSSES)
def test_safe_under_bfloat16_and_on_degenerate_batches(name, loss_checks):
    torch.manual_seed(0)
    loss = create(name, num_classes=6, embedding_dim=16)
    loss_checks.safe_under_bfloat16(loss)
    loss_checks.degenerate_batches_safe(loss)


@pytest.mark.parametrize("name", CLASS_WEIGHT_LOSSES)
def test_autocast_does_not_change_the_float32_value(name):
    """The loss switches autocast off: float32 inputs give the float32 value under bf16."""
    torch.manual_seed(0)
    loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
    embeddings, labels = batch(torch.float32)
    reference = loss(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(embeddings, labels)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)


@pytest.mark.parametrize("name", CLASS_WEIGHT_LOSSES)
def test_half_precision_embeddings_give_the_float32_loss(name):
    """float16 / bfloat16 embeddings outside autocast: computed in float32, finite."""
    torch.manual_seed(0)
    loss = create(name, num_classes=NUM_CLASSES, embedding_dim=DIM)
    embeddings, labels = batch(torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        low = embeddings.to(dtype).requires_grad_(True)
        value = loss(low, labels)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, loss(low.detach().float(), labels))
        value.backward()
        assert low.grad.dtype == dtype and torch.isfinite(low.grad).all()
