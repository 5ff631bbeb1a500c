"""``fairdml bench PRESET [key=value ...] --out DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", help="benchmark preset: a path or a name under configs/ "
                                       "(e.g. bench/demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override preset fields, e.g. protocol.trials=2 run.train.epochs=3")
    parser.add_argument("--out", type=Path, required=True,
                        help="benchmark directory (results.sqlite, runs/); started again with "
                             "the same arguments, it continues where it stopped")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from fairdml import data
    from fairdml.bench.config import BenchConfig
    from fairdml.bench.protocol import run_benchmark
    from fairdml.bench.store import StoreError
    from fairdml.config import ConfigError, load_config

    try:
        bench = load_config(args.preset, args.overrides, cls=BenchConfig)
        table = data.load(bench.run.data.name, bench.run.data.root,
                          download=bench.run.data.download)
        if len(set(table.with_split("train").labels.tolist())) < bench.protocol.num_folds * 2:
            raise ConfigError(
                f"data set {bench.run.data.name!r} has too few training classes for "
                f"{bench.protocol.num_folds} class-disjoint folds (need at least 2 per fold)")
        store = run_benchmark(bench, table, args.out, progress=not args.no_progress)
    except (ConfigError, StoreError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    store.close()
    print(f"results in {args.out / 'results.sqlite'}; run `fairdml report {args.out}`")
    return 0
