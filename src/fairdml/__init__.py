"""fairdml: deep metric learning with exact splits, a fair protocol and exact metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate"]

if TYPE_CHECKING:
    from fairdml.eval import evaluate


def __getattr__(name: str) -> Any:
    # ``fairdml.evaluate`` is the real function from fairdml.eval, imported on first use so
    # that ``import fairdml`` (and ``fairdml --help``) does not pay for torch.
    if name == "evaluate":
        from fairdml.eval import evaluate

        return evaluate
    raise AttributeError(f"module 'fairdml' has no attribute {name!r}")
