"""``fairdml report DIR``: report.md and report.html of a benchmark directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="a directory written by `fairdml bench`")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fairdml.bench.report import KINDS, build_report
    from fairdml.ui import table_console

    try:
        report = build_report(args.directory)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    console = table_console()
    for kind in (*KINDS, "baseline"):
        rows = {m: r for (m, k), r in report["table"].items() if k == kind}
        if not rows:
            continue
        table = Table(title=f"{kind} (test, mean ± 95% CI; best in bold)")
        table.add_column("method", no_wrap=True)
        for column in report["columns"]:
            table.add_column(column, justify="right")
        for method, row in sorted(rows.items()):
            table.add_row(method, *[f"[bold]{row[c].text()}[/bold]" if row[c].best
                                    else row[c].text() for c in report["columns"]])
        console.print(table)
    print(f"wrote {args.directory / 'report.md'} and {args.directory / 'report.html'}")
    return 0
