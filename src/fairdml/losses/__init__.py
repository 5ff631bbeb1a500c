"""Metric-learning losses, by family, behind one registry.

Contract (DESIGN.md "Public contracts"):

* ``create(name, **params) -> torch.nn.Module``; calling the module as
  ``loss(embeddings, labels)`` returns a scalar tensor.
* Losses that need the number of training classes or the embedding size (proxies, class
  weights) declare ``num_classes`` / ``embedding_dim`` constructor parameters; the trainer
  passes them through ``create(..., num_classes=..., embedding_dim=...)`` and they are
  forwarded only to losses that accept them. Labels given to such losses must be
  contiguous class indices ``0..num_classes-1`` (the trainer maps them).
* Learnable state (proxies, class weights, beta) are ordinary parameters; the attribute
  ``lr_multiplier`` (float, default 1) tells the trainer how to scale the base learning
  rate for them (see :func:`lr_multiplier`).
* Losses that accept a miner take it as the constructor parameter ``miner`` (a registry
  name from :mod:`fairdml.losses.miners` or a miner instance), so the call contract stays
  ``loss(embeddings, labels)``.

``names()`` lists all losses; ``register("name")`` adds one.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from fairdml.registry import Registry

LOSSES: Registry = Registry("loss")
register = LOSSES.register

# Each family module registers its losses on import.
_FAMILIES = ("pairs", "proxies", "classification", "ranking", "memory", "tuples", "hyperbolic")


def _import_families() -> None:
    for family in _FAMILIES:
        importlib.import_module(f"fairdml.losses.{family}")


def names() -> list[str]:
    """Names of all registered losses."""
    _import_families()
    return LOSSES.names()


def create(name: str, *, num_classes: int | None = None, embedding_dim: int | None = None,
           **params: Any) -> torch.nn.Module:
    """Build loss ``name`` with its parameters (defaults from the paper)."""
    _import_families()
    context = {key: value for key, value in
               (("num_classes", num_classes), ("embedding_dim", embedding_dim))
               if value is not None}
    return LOSSES.create(name, context=context, **params)


def lr_multiplier(loss: torch.nn.Module) -> float:
    """Learning-rate multiplier the trainer applies to the loss's own parameters."""
    return float(getattr(loss, "lr_multiplier", 1.0))


__all__ = ["LOSSES", "create", "names", "register", "lr_multiplier"]
