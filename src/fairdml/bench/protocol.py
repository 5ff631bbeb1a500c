"""The reality-check protocol as one function: search, retrain, test, baselines.

For each method (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020):

1. hyper-parameter search on the training classes only: k class-disjoint folds, objective =
   mean best validation MAP@R over the folds (`fairdml.bench.search`);
2. the best setting retrained ``repeats`` times with new seeds (k fold models each);
3. each repeat tested once on the sealed test split: "separated" (mean of the k models'
   metrics) and "concatenated" (their L2-normalised embeddings concatenated).

Baselines (the untrained trunk, and trunk + untrained head) are tested once. Every result
goes to the results store as it is produced; a restarted benchmark skips what is there.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from fairdml.bench.config import BenchConfig, method_run_config, split_search_space
from fairdml.bench.sealed import SealedTest
from fairdml.bench.search import search_method, train_folds
from fairdml.bench.store import ResultsStore
from fairdml.config import to_dict
from fairdml.data.table import SampleTable
from fairdml.train.progress import create_progress


def repeat_seed(bench: BenchConfig, repeat: int) -> int:
    """Seed of retraining ``repeat`` (the search uses ``protocol.seed`` itself)."""
    return bench.protocol.seed + 1 + repeat


def planned_units(bench: BenchConfig) -> int:
    """Fold trainings the whole benchmark needs (the overall progress bar's total)."""
    total = 0
    for method in bench.methods:
        ranges, _ = split_search_space(method)
        trials = bench.protocol.trials if ranges else 1
        total += (trials + bench.protocol.repeats) * bench.protocol.num_folds
    return total


def completed_units(bench: BenchConfig, store: ResultsStore) -> int:
    done = 0
    for method in bench.methods:
        ranges, _ = split_search_space(method)
        trials = bench.protocol.trials if ranges else 1
        done += min(len(store.trials(method.name)), trials) * bench.protocol.num_folds
        done += len(store.runs(method=method.name, stage="repeat", kind="fold", split="test"))
    return done


def run_benchmark(bench: BenchConfig, table: SampleTable, out: Path, *,
                  progress: bool = True) -> ResultsStore:
    """Run (or continue) the whole benchmark into ``out``; returns the results store."""
    out.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(out / "results.sqlite")
    store.bind_preset(to_dict(bench))
    storage = bench.protocol.storage or store.url
    train_table = table.with_split("train")
    sealed = SealedTest(table)
    del table  # from here on, test data is reachable only through `sealed`
    display = create_progress(progress)
    with display:
        overall = display.add_task("benchmark", total=planned_units(bench),
                                   completed=completed_units(bench, store), status="")
        if bench.protocol.baselines:
            _baselines(bench, sealed, store)
        for method in bench.methods:
            on_progress = _progress_callback(display, overall, method.name,
                                             bench.protocol.objective)
            best = search_method(bench, method, train_table, store, out, storage=storage,
                                 on_progress=on_progress, display=display)
            store.set_meta(f"best_params/{method.name}", _json(best))
            for repeat in range(bench.protocol.repeats):
                _run_repeat(bench, method, best, repeat, train_table, sealed, store, out,
                            display, lambda: display.advance(overall))
    return store


def _progress_callback(display: Any, task: Any, method: str, objective: str) -> Any:
    """Advances the overall bar per fold and shows the best validation value of ``method``."""
    best = [float("nan")]

    def on_progress(event: str, value: float) -> None:
        if event == "fold":
            display.advance(task)
        else:
            best[0] = value
        display.update(task, status=f"{method}: best validation {objective} {best[0]:.4f}")

    return on_progress


def _run_repeat(bench: BenchConfig, method: Any, params: dict[str, Any], repeat: int,
                train_table: SampleTable, sealed: SealedTest, store: ResultsStore, out: Path,
                display: Any, advance: Any) -> None:
    key = {"method": method.name, "stage": "repeat", "repeat": repeat, "fold": -1,
           "split": "test"}
    if store.has_run(**key, kind="concatenated"):
        return
    seed = repeat_seed(bench, repeat)
    root = out / "runs" / method.name / f"repeat{repeat}"
    started = time.perf_counter()

    def record(fold: int, summary: dict[str, Any], config: Any) -> None:
        curve = [(r["epoch"], r["validation"][bench.protocol.objective])
                 for r in summary["history"] if "validation" in r]
        store.add_curve(method.name, "repeat", repeat, fold, curve)
        store.add_run(method=method.name, stage="repeat", repeat=repeat, fold=fold,
                      kind="fold", split="validation", seed=seed,
                      metrics=summary["best_validation"], config=to_dict(config),
                      wall_seconds=sum(r.get("seconds", 0.0) for r in summary["history"]))
        advance()

    train_folds(bench, method, params, train_table, root, seed=seed, on_fold=record,
                display=display)
    config = method_run_config(bench, method, params, [f"train.seed={seed}"])
    run_dirs = [root / f"fold{fold}" for fold in range(bench.protocol.num_folds)]
    per_fold, separated, concatenated = sealed.evaluate_repeat(run_dirs, config)
    wall = time.perf_counter() - started
    for fold, metrics in enumerate(per_fold):
        store.add_run(**{**key, "fold": fold}, kind="fold", seed=seed, metrics=metrics,
                      config=to_dict(config), wall_seconds=wall)
    store.add_run(**key, kind="separated", seed=seed, metrics=separated,
                  config=to_dict(config), wall_seconds=wall)
    store.add_run(**key, kind="concatenated", seed=seed, metrics=concatenated,
                  config=to_dict(config), wall_seconds=wall)


def _baselines(bench: BenchConfig, sealed: SealedTest, store: ResultsStore) -> None:
    for name, head in (("untrained trunk", False), ("trunk + untrained head", True)):
        key = {"method": name, "stage": "baseline", "repeat": 0, "fold": -1,
               "kind": "baseline", "split": "test"}
        if store.has_run(**key):
            continue
        config = dataclasses.replace(bench.run, train=dataclasses.replace(
            bench.run.train, seed=bench.protocol.seed))
        started = time.perf_counter()
        metrics = sealed.evaluate_untrained(config, head=head)
        store.add_run(**key, seed=bench.protocol.seed, metrics=metrics, config=to_dict(config),
                      wall_seconds=time.perf_counter() - started)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)
