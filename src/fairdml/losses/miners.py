"""Miners: choose the informative pairs or triplets of a batch.

A miner is a callable ``miner(embeddings, labels)``; losses that accept one take it as
their ``miner`` constructor parameter. ``create(name, **params)`` and ``names()`` work as
for losses.
"""

from __future__ import annotations

from typing import Any

from fairdml.registry import Registry

MINERS: Registry = Registry("miner")
register = MINERS.register


def names() -> list[str]:
    """Names of all registered miners."""
    return MINERS.names()


def create(name: str, **params: Any) -> Any:
    """Build miner ``name`` with its parameters."""
    return MINERS.create(name, **params)
