"""The ``fairdml`` command.

Each sub-command lives in the module of the sub-package it belongs to and exposes
``configure(parser)`` and ``run(args) -> int``; this file only dispatches, so that
``fairdml --help`` stays fast and one broken optional part cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("fairdml.train.command", "train an embedding model from a YAML preset"),
    "eval": ("fairdml.eval.command", "evaluate a run directory or an embeddings .npz file"),
    "bench": ("fairdml.bench.command", "run the reality-check benchmark protocol"),
    "report": ("fairdml.bench.report_command", "write the report of a benchmark directory"),
    "data": ("fairdml.data.command", "list, prepare and check data sets"),
    "demo": ("fairdml.train.demo", "offline demo: five losses on digits, two seeds each"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the requested sub-command's module is imported to configure it."""
    parser = argparse.ArgumentParser(prog="fairdml", description=__doc__.splitlines()[0])
    from fairdml import __version__

    parser.add_argument("--version", action="version", version=f"fairdml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        if name == _requested_command(argv):
            importlib.import_module(module).configure(sub_parser)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
