"""fairdml: deep metric learning with exact splits, a fair protocol and exact metrics."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate"]


def evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
    """Retrieval and clustering metrics of embeddings; see :func:`fairdml.eval.evaluate`."""
    from fairdml.eval.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)

