"""Write one benchmark's section of a markdown results file, leaving the others as they are.

Each benchmark script owns one ``## Heading`` section of docs/benchmarks.md;
`replace_section` swaps that section for a fresh one (or appends it when absent).
"""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace the section of ``path`` that starts with the line ``heading`` by ``section``.

    The section ends before the next ``## `` line; a missing file starts as ``# Benchmarks``.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    new = section.rstrip("\n").splitlines()
    if start is None:
        result = text.rstrip("\n").splitlines() + [""] + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        result = lines[:start] + new + ([""] + lines[end:] if end < len(lines) else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(result) + "\n")
