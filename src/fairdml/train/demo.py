"""``fairdml demo``: five losses x two seeds on digits, offline, with a results table.

Each (loss, seed) is an ordinary run directory under ``--out``; a finished run is not
redone and an interrupted one is resumed, so running the demo again never loses results.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEMO_LOSSES: dict[str, dict[str, Any]] = {
    "contrastive": {},
    "triplet": {"miner": "semihard"},
    "multi_similarity": {"miner": "multi_similarity"},
    "proxy_anchor": {},
    "normalized_softmax": {},
}
TABLE_METRICS = ("recall@1", "r_precision", "map@r", "nmi")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="output directory (default runs/demo)")
    parser.add_argument("--preset", default="demo", help="base preset (default: demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--losses", nargs="+", default=list(DEMO_LOSSES),
                        choices=sorted(DEMO_LOSSES))
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides applied to every run, e.g. train.epochs=2")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    results = run_demo(args.out, preset=args.preset, seeds=args.seeds, losses=args.losses,
                       overrides=args.overrides)
    print_table(results, title=f"fairdml demo: digits test classes 5-9, "
                               f"{len(args.seeds)} seeds, mean ± 95% CI")
    print(f"wrote {args.out}/summary.json and summary.md in {time.perf_counter() - started:.0f} s")
    return 0


def run_demo(out: Path, *, preset: str = "demo", seeds: list[int] | None = None,
             losses: list[str] | None = None, overrides: list[str] | None = None
             ) -> dict[str, list[dict[str, float]]]:
    """Train and test every (loss, seed); returns test metrics per loss."""
    from fairdml import data
    from fairdml.config import load_config
    from fairdml.train.final import final_test
    from fairdml.train.trainer import LAST, Trainer

    seeds = [0, 1] if seeds is None else seeds
    losses = list(DEMO_LOSSES) if losses is None else losses
    results: dict[str, list[dict[str, float]]] = {}
    for loss in losses:
        results[loss] = []
        for seed in seeds:
            run_dir = out / f"{loss}-seed{seed}"
            metrics_file = run_dir / "metrics.json"
            finished = metrics_file.is_file() and "test" in json.loads(metrics_file.read_text())
            if not finished:
                miner = DEMO_LOSSES[loss].get("miner")
                config = load_config(preset, [f"loss.name={loss}", f"train.seed={seed}",
                                              f"loss.miner={miner if miner else 'null'}",
                                              f"name={loss}-seed{seed}", *(overrides or [])])
                table = data.load(config.data.name, config.data.root)
                trainer = Trainer(config, table.with_split("train"), run_dir,
                                  resume=(run_dir / LAST).is_file())
                print(f"training {loss} (seed {seed}) -> {run_dir}")
                trainer.fit()
                final_test(run_dir)
            results[loss].append(json.loads(metrics_file.read_text())["test"])
    write_summary(out, results)
    return results


def write_summary(out: Path, results: dict[str, list[dict[str, float]]]) -> None:
    from fairdml.bench.statistics import confidence_interval, format_interval

    summary = {loss: {metric: dict(zip(("mean", "ci95"), confidence_interval(
        [run[metric] for run in runs]))) for metric in TABLE_METRICS}
        for loss, runs in results.items()}
    (out / "summary.json").write_text(json.dumps({"per_run": results, "summary": summary},
                                                 indent=2))
    lines = ["| loss | " + " | ".join(TABLE_METRICS) + " |",
             "|---" * (len(TABLE_METRICS) + 1) + "|"]
    for loss, runs in results.items():
        cells = [format_interval([run[m] for run in runs]) for m in TABLE_METRICS]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def print_table(results: dict[str, list[dict[str, float]]], title: str) -> None:
    from rich.table import Table

    from fairdml.bench.statistics import format_interval
    from fairdml.ui import table_console

    table = Table(title=title)
    table.add_column("loss")
    for metric in TABLE_METRICS:
        table.add_column(metric, justify="right")
    for loss, runs in results.items():
        table.add_row(loss, *[format_interval([run[m] for run in runs]) for m in TABLE_METRICS])
    table_console().print(table)
