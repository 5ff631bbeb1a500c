"""Shared checks for every loss: it trains, it is safe under autocast and on degenerate batches.

These helpers take a loss module (already built) and assert the properties that issue #5
requires of every loss, so each family's test file calls them instead of re-writing them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

NUM_CLASSES = 6
PER_CLASS = 8
INPUT_DIM = 24
EMBEDDING_DIM = 16


def map_at_r_bruteforce(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out MAP@R by full sorting (small data only): the test oracle."""
    x = torch.nn.functional.normalize(embeddings.detach().double(), dim=1)
    similarity = x @ x.T
    n = len(labels)
    similarity.fill_diagonal_(-float("inf"))
    scores = []
    for i in range(n):
        order = torch.argsort(similarity[i], descending=True, stable=True)[: n - 1]
        relevant = (labels[order] == labels[i]).double()
        r = int((labels == labels[i]).sum()) - 1
        if r == 0:
            continue
        hits = relevant[:r]
        precision = torch.cumsum(hits, 0) / torch.arange(1, r + 1, dtype=torch.double)
        scores.append(float((precision * hits).sum() / r))
    return float(np.mean(scores))


SIGNAL_DIM = 8


def separable_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """NUM_CLASSES classes, separable in SIGNAL_DIM input dimensions and hidden by large
    class-independent noise in the others.

    A random linear embedding sees mostly the noise (MAP@R near chance, about 0.15); a
    trained one learns to keep the signal dimensions, so a loss that trains raises MAP@R a
    lot and one that does not cannot pass by luck.
    """
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_CLASSES, SIGNAL_DIM, generator=generator) * 2
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    signal = centres[labels] + 0.3 * torch.randn(len(labels), SIGNAL_DIM, generator=generator)
    noise = 3 * torch.randn(len(labels), INPUT_DIM - SIGNAL_DIM, generator=generator)
    return torch.cat([signal, noise], dim=1), labels


def assert_loss_trains(loss: torch.nn.Module, *, steps: int = 60, lr: float = 0.01,
                       seed: int = 0, min_gain: float = 0.2) -> None:
    """A few Adam steps on a tiny separable problem lower the loss and raise MAP@R.

    The embedder is a random linear map, under which the classes are poorly separated
    (see `separable_problem`); the loss's own parameters (proxies...) are trained too.
    """
    torch.manual_seed(seed)
    inputs, labels = separable_problem(seed)
    embedder = torch.nn.Linear(INPUT_DIM, EMBEDDING_DIM)
    parameters = list(embedder.parameters()) + list(loss.parameters())
    optimiser = torch.optim.Adam(parameters, lr=lr)

    def embed() -> torch.Tensor:
        return torch.nn.functional.normalize(embedder(inputs), dim=1)

    with torch.no_grad():
        map_before = map_at_r_bruteforce(embed(), labels)
        loss_before = float(loss(embed(), labels))
    for _ in range(steps):
        optimiser.zero_grad()
        value = loss(embed(), labels)
        assert torch.isfinite(value), f"loss became {value}"
        value.backward()
        optimiser.step()
    with torch.no_grad():
        map_after = map_at_r_bruteforce(embed(), labels)
        loss_after = float(loss(embed(), labels))
    assert loss_after < loss_before, f"loss did not decrease: {loss_before} -> {loss_after}"
    assert map_after >= map_before + min_gain, (
        f"map@r did not improve: {map_before:.3f} -> {map_after:.3f}"
    )


def assert_safe_under_bfloat16(loss: torch.nn.Module, seed: int = 0) -> None:
    """Forward and backward under CPU bfloat16 autocast give finite values and gradients."""
    inputs, labels = separable_problem(seed)
    embedder = torch.nn.Linear(INPUT_DIM, EMBEDDING_DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = torch.nn.functional.normalize(embedder(inputs), dim=1)
        value = loss(embeddings, labels)
    assert torch.isfinite(value.float()), f"loss under bfloat16 is {value}"
    value.float().backward()
    for parameter in list(embedder.parameters()) + list(loss.parameters()):
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), "non-finite gradient under bfloat16"


def assert_degenerate_batches_safe(loss: torch.nn.Module) -> None:
    """A batch without any positive pair, and one with a singleton class: never NaN.

    The loss either returns a finite value with finite gradients (0 with zero gradient
    when there is nothing to learn from), or raises a ValueError explaining why the
    method cannot work on such a batch.
    """
    generator = torch.Generator().manual_seed(1)
    for labels in (torch.arange(4), torch.tensor([0, 0, 1, 1, 2])):
        embeddings = torch.nn.functional.normalize(
            torch.randn(len(labels), EMBEDDING_DIM, generator=generator), dim=1
        ).requires_grad_(True)
        try:
            value = loss(embeddings, labels)
        except ValueError as error:
            assert str(error), "a refusal must explain itself"
            continue
        assert torch.isfinite(value), f"loss on labels {labels.tolist()} is {value}"
        value.backward()
        assert embeddings.grad is None or torch.isfinite(embeddings.grad).all()


@pytest.fixture
def separable() -> tuple[torch.Tensor, torch.Tensor]:
    return separable_problem()


@pytest.fixture
def loss_checks():
    """The shared loss checks as one namespace, for test files in this folder."""
    from types import SimpleNamespace

    return SimpleNamespace(
        trains=assert_loss_trains,
        safe_under_bfloat16=assert_safe_under_bfloat16,
        degenerate_batches_safe=assert_degenerate_batches_safe,
        map_at_r=map_at_r_bruteforce,
        problem=separable_problem,
    )
