"""``fairdml train PRESET [key=value ...] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fairdml.config import ConfigError, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", help="YAML preset: a path or a name under configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config fields, e.g. train.epochs=5 loss.name=triplet")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory (default runs/<name>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-test", action="store_true",
                        help="stop after training; run `fairdml eval RUN_DIR` later")


def run(args: argparse.Namespace) -> int:
    from fairdml import data
    from fairdml.train import distributed
    from fairdml.train.final import final_test
    from fairdml.train.trainer import RunDirectoryError, Trainer

    try:
        config = load_config(args.preset, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.resume and args.out is None:
        print("error: --resume needs --out RUN_DIR", file=sys.stderr)
        return 2
    run_dir = args.out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    distributed.init_from_environment()
    try:
        table = data.load(config.data.name, config.data.root, download=config.data.download)
        trainer = Trainer(config, table.with_split("train"), run_dir, resume=args.resume)
    except (ConfigError, RunDirectoryError, FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    from fairdml.data.dataset import ImageReadError

    try:
        summary = trainer.fit()
    except (ImageReadError, FloatingPointError) as error:
        print(f"error: {error}\nthe last finished epoch is kept in {run_dir}; fix the cause "
              "and continue with --resume", file=sys.stderr)
        return 1
    if distributed.is_main():
        print(f"run directory: {run_dir}")
        print(f"best epoch {summary['best_epoch']}: validation "
              f"{json.dumps(summary['best_validation'])}")
        if not args.no_test:
            metrics = final_test(run_dir)
            print_metrics(metrics, title=f"test metrics ({config.data.name})")
    return 0


def print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.table import Table

    from fairdml.ui import table_console

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table_console().print(table)
