"""Verify a data set tree: index files, official counts, and that every image decodes.

``check_tree(name, root)`` loads the table (missing index files and malformed lines raise
with file and line), compares the counts per split with the official ones of
REFERENCE.md (a full official copy must match exactly; each differing number is named),
and opens and fully decodes every listed image on all cores, collecting the files that
are missing or will not decode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fairdml.data import SOURCES
from fairdml.data.table import SampleTable

PARALLEL_CHUNK = 32
# imported once by the fork server, so that each worker starts without importing them
WORKER_MODULES = ("fairdml.data.check", "fairdml.data.resized", "PIL.Image", "PIL.JpegImagePlugin")


@dataclasses.dataclass
class CheckReport:
    """Outcome of `check_tree`; ``ok`` when nothing differs and every image decodes."""

    name: str
    table: SampleTable
    count_differences: list[str]
    missing: list[str]
    corrupt: list[str]
    expected: dict[str, dict[str, int]] | None

    @property
    def ok(self) -> bool:
        return not (self.count_differences or self.missing or self.corrupt)


def official_info(name: str) -> Any:
    """The `OfficialDataset` facts of a standard source, or None for other sources."""
    source = SOURCES.get(name)  # raises with the list of valid names
    module = importlib.import_module(source.__module__)
    return getattr(module, "INFO", None)


def compare_counts(summary: dict[str, dict[str, int]],
                   expected: dict[str, dict[str, int]]) -> list[str]:
    """One line per count that differs from the official value."""
    differences = []
    for split, counts in expected.items():
        for key, want in counts.items():
            found = summary.get(split, {}).get(key)
            if found != want:
                differences.append(f"{split} {key}: expected {want:,}, found {found:,}"
                                   if found is not None else f"{split} {key}: missing")
    return differences


def check_tree(name: str, root: str | Path, *, workers: int | None = None,
               progress: bool = True, check_counts: bool = True) -> CheckReport:
    """Load data set ``name`` from ``root`` and verify counts and images (module docstring)."""
    from fairdml.data import load

    info = official_info(name)
    table = load(name, root, **({"resized": None} if info is not None else {}))
    expected = info.expected if info is not None else None
    differences = compare_counts(table.summary(), expected) if (expected and check_counts) \
        else []
    missing, corrupt = [], []
    if not table.in_memory:
        paths = [str(table.path(i)) for i in range(len(table))]
        results = run_parallel(decode_error, paths, workers=workers, progress=progress,
                               description=f"decode {name}")
        for path, error in zip(paths, results):
            if error is None:
                continue
            (missing if error == "missing" else corrupt).append(
                path if error == "missing" else f"{path}: {error}")
    return CheckReport(name=name, table=table, count_differences=differences,
                       missing=missing, corrupt=corrupt, expected=expected)


def decode_error(path: str) -> str | None:
    """None when ``path`` exists and decodes completely; otherwise why not."""
    from PIL import Image

    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # any decoder failure is a finding, not a crash
        return f"{type(error).__name__}: {error}"
    return None


def run_parallel(function: Callable[[Any], Any], jobs: Sequence[Any], *,
                 workers: int | None = None, progress: bool = True,
                 description: str = "working") -> list[Any]:
    """``[function(job) for job in jobs]`` on ``workers`` processes with a progress bar.

    ``workers=None`` uses all cores; 1 (or a handful of jobs) runs in this process.
    Results keep the order of ``jobs``.
    """
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with _bar(description, len(jobs), enabled=progress) as advance:
        if workers == 1 or len(jobs) < 2 * PARALLEL_CHUNK:
            results = []
            for job in jobs:
                results.append(function(job))
                advance(1)
            return results
        # not fork: the progress bar runs a thread, and forking a threaded process can hang
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
        if context.get_start_method() == "forkserver":
            context.set_forkserver_preload(list(WORKER_MODULES))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = []
            for result in pool.map(function, jobs, chunksize=PARALLEL_CHUNK):
                results.append(result)
                advance(1)
            return results


@contextlib.contextmanager
def _bar(description: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` steps (or nothing); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.update(task, advance=n)
