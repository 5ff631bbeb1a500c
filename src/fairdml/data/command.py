"""``fairdml data``: list the data sets, prepare (download, resize) and check a tree.

    fairdml data list
    fairdml data prepare NAME --root DIR [--download] [--resize 256] [--workers N]
    fairdml data check NAME --root DIR [--workers N]

``check`` exits with 1 when a count differs from the official one, or an image is
missing or does not decode; bad input (wrong root, missing or malformed index files,
failed download) exits with 2 and a message naming the file.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from fairdml.data.download import DownloadError

EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2
SHOWN_PROBLEMS = 20
INPUT_ERRORS = (FileNotFoundError, ValueError, KeyError, DownloadError, RuntimeError, OSError)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``list``, ``prepare`` and ``check`` sub-commands."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the registered data sets")
    prepare = sub.add_parser("prepare", help="download a data set and/or write a resized cache")
    check = sub.add_parser("check", help="verify index files, official counts and every image")
    for command in (prepare, check):
        command.add_argument("name", help="data set name (see `fairdml data list`)")
        command.add_argument("--root", type=Path, required=True, help="data set folder")
        command.add_argument("--workers", type=int, default=None,
                             help="processes for image work (default: all cores)")
    prepare.add_argument("--download", action="store_true",
                         help="fetch and extract the official files first")
    prepare.add_argument("--resize", type=int, default=None, metavar="SIZE",
                         help="write a cache of images with the shorter side resized to SIZE "
                              "(the protocol uses 256); the loaders use it when present")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; returns the exit status."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    try:
        if args.data_command == "list":
            return _list(console)
        if args.data_command == "prepare":
            return _prepare(console, args)
        return _check(console, args)
    except INPUT_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
        return EXIT_BAD_INPUT


def _list(console) -> int:
    from rich.table import Table

    from fairdml.data import SOURCES
    from fairdml.data.check import official_info

    table = Table(title="fairdml data sets")
    for column in ("name", "description", "root needed", "download"):
        table.add_column(column)
    for name in SOURCES.names():
        try:
            source = SOURCES.get(name)
        except ImportError as error:  # an optional dependency missing: say so, list the rest
            table.add_row(name, f"unavailable: {error}", "?", "?")
            continue
        info = official_info(name)
        module_doc = getattr(sys.modules.get(source.__module__), "__doc__", None)
        description = (info.description if info is not None
                       else _first_line(module_doc) or _first_line(source.__doc__))
        table.add_row(name, description, "yes" if _needs_root(source) else "no",
                      _download_note(info))
    console.print(table)
    return 0


def _download_note(info) -> str:
    """How ``--download`` verifies the files of a standard data set."""
    if info is None:
        return "see the source"
    if not info.remote_files:
        return "by hand"
    checks = set()
    for remote in info.remote_files:
        checks |= {name for name, value in (("size", remote.size), ("SHA-256", remote.sha256),
                                            ("MD5", remote.md5)) if value is not None}
    return "verified: " + ", ".join(sorted(checks))


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _needs_root(source) -> bool:
    """A source needs a root when its ``root`` parameter has no default."""
    try:
        parameter = inspect.signature(source).parameters.get("root")
    except (TypeError, ValueError):
        return True
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _prepare(console, args: argparse.Namespace) -> int:
    from fairdml.data import load
    from fairdml.data.check import official_info
    from fairdml.data.resized import write_resized

    standard = official_info(args.name) is not None
    if args.resize is not None and not standard:
        raise ValueError(f"--resize is supported for the standard data sets only "
                         f"(cub200, cars196, sop, inshop), not {args.name!r}")
    options = {"resized": None} if standard else {}
    table = load(args.name, args.root, download=args.download, **options)
    console.print(f"{args.name}: {len(table):,} images in {table.root or args.root}",
                  highlight=False)
    _print_summary(console, table.summary(), None)
    if args.resize is not None:
        folder = write_resized(table, args.resize, workers=args.workers)
        console.print(f"resized cache written to {folder}; `fairdml.data.load` uses it "
                      "automatically" + ("" if args.resize == 256 else
                                         f" when called with resized={args.resize}"),
                      highlight=False)
    return 0


def _check(console, args: argparse.Namespace) -> int:
    from fairdml.data.check import check_tree

    report = check_tree(args.name, args.root, workers=args.workers)
    _print_summary(console, report.table.summary(), report.expected)
    for line in report.count_differences:
        console.print(f"[red]count differs from the official data set:[/red] {line}",
                      highlight=False)
    for title, problems in (("missing image", report.missing),
                            ("image does not decode", report.corrupt)):
        for problem in problems[:SHOWN_PROBLEMS]:
            console.print(f"[red]{title}:[/red] {problem}", highlight=False)
        if len(problems) > SHOWN_PROBLEMS:
            console.print(f"... and {len(problems) - SHOWN_PROBLEMS:,} more ({title})")
    if report.ok:
        console.print(f"[green]{args.name}: OK[/green] - {len(report.table):,} images decode"
                      + (" and all counts match the official data set" if report.expected
                         else ""), highlight=False)
        return 0
    console.print(f"[red]{args.name}: {len(report.count_differences)} count difference(s), "
                  f"{len(report.missing)} missing and {len(report.corrupt)} undecodable "
                  "image(s)[/red]", highlight=False)
    return EXIT_FINDINGS


def _print_summary(console, summary: dict[str, dict[str, int]],
                   expected: dict[str, dict[str, int]] | None) -> None:
    """One row per split; a cell shows ``found (official N)`` when it differs."""
    from rich.table import Table

    keys = ("images", "classes", "queries", "gallery")
    table = Table(title="summary per split" + (" (official counts in brackets where they "
                                                 "differ)" if expected else ""))
    table.add_column("split")
    for key in keys:
        table.add_column(key, justify="right")
    for split, counts in summary.items():
        cells = []
        for key in keys:
            want = (expected or {}).get(split, {}).get(key)
            cell = f"{counts[key]:,}"
            if want is not None and want != counts[key]:
                cell = f"[red]{cell}[/red] ({want:,})"
            cells.append(cell)
        table.add_row(split, *cells)
    console.print(table)
