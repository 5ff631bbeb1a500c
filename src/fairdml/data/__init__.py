"""Data sets as `SampleTable`s, class-disjoint splits, samplers and transforms.

``load(name, root)`` returns the table of a registered source; ``names()`` lists them.
A source is a function ``(root, *, download=False, **options) -> SampleTable``
registered with ``@register("name")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairdml.data.table import SampleTable, same_set_table
from fairdml.registry import Registry

SOURCES: Registry = Registry("data set")
register = SOURCES.register

for _name in ("digits", "omniglot", "folder", "cub200", "cars196", "sop", "inshop"):
    SOURCES.register_lazy(_name, f"fairdml.data.sources.{_name}")


def names() -> list[str]:
    """Names of all registered data sets."""
    return SOURCES.names()


def load(name: str, root: str | Path | None = None, *, download: bool = False,
         **options: Any) -> SampleTable:
    """Load data set ``name`` from ``root`` as a `SampleTable`.

    ``download=True`` fetches the official files first where the source supports it.
    Sources that ship with a dependency (``digits``) ignore ``root``.
    """
    source = SOURCES.get(name)
    table = source(None if root is None else Path(root), download=download, **options)
    table.check_class_disjoint()
    return table


__all__ = ["SampleTable", "same_set_table", "load", "names", "register", "SOURCES"]
