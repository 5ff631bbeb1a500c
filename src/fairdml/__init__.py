"""fairdml: deep metric learning with exact splits, a fair protocol and exact metrics."""

from __future__ import annotations

from fairdml.eval import evaluate

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate"]
