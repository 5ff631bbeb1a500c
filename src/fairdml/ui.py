"""Terminal output shared by the commands: one rich console for tables."""

from __future__ import annotations

import sys

from rich.console import Console


def table_console() -> Console:
    """A console for result tables: the terminal's width, or 200 columns when the output
    is a file or a pipe (rich would otherwise wrap numbers at 80 columns)."""
    return Console(width=None if sys.stdout.isatty() else 200)
