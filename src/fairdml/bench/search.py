"""Training on validation folds and the hyper-parameter search (optuna).

Everything here sees the *training* split only: `train_folds` trains one model per
class-disjoint fold and returns validation results, and `search_method` maximises the
mean validation objective over the folds. Run directories are keyed by the parameters,
so a killed search restarted with the same arguments resumes the interrupted training
instead of starting it again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairdml.bench.config import (
    BenchConfig,
    MethodConfig,
    SearchRange,
    method_run_config,
    split_search_space,
)
from fairdml.bench.store import ResultsStore
from fairdml.config import RunConfig
from fairdml.data.table import SampleTable


def params_key(params: dict[str, Any]) -> str:
    """A short stable name for a parameter setting (run directory name)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_fold(config: RunConfig, train_table: SampleTable, run_dir: Path,
               display: Any = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one fold model; returns the trainer's summary."""
    from fairdml.train.trainer import LAST, Trainer

    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    trainer = Trainer(config, train_table, run_dir, resume=(run_dir / LAST).is_file())
    return trainer.fit(progress_display=display)


def train_folds(bench: BenchConfig, method: MethodConfig, params: dict[str, Any],
                train_table: SampleTable, root: Path, *, seed: int,
                on_fold: Callable[[int, dict[str, Any], RunConfig], None] | None = None,
                display: Any = None) -> list[float]:
    """Train the k fold models of one setting; returns each fold's best validation value."""
    values = []
    for fold in range(bench.protocol.num_folds):
        config = method_run_config(bench, method, params, [
            f"data.num_folds={bench.protocol.num_folds}", f"data.val_fold={fold}",
            f"train.seed={seed}", f"eval.val_metric={bench.protocol.objective}",
            "train.progress=false" if display is None else "train.progress=true"])
        summary = train_fold(config, train_table, root / f"fold{fold}", display)
        value = summary["best_validation"].get(bench.protocol.objective, math.nan)
        values.append(float(value))
        if on_fold is not None:
            on_fold(fold, summary, config)
    return values


def _suggest(trial: Any, search_range: SearchRange) -> Any:
    if search_range.choices is not None:
        return trial.suggest_categorical(search_range.key, list(search_range.choices))
    if search_range.type == "int":
        return trial.suggest_int(search_range.key, int(search_range.low), int(search_range.high),
                                 log=search_range.scale == "log")
    return trial.suggest_float(search_range.key, search_range.low, search_range.high,
                               log=search_range.scale == "log")


def create_study(bench: BenchConfig, method: MethodConfig, storage: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=bench.protocol.seed)
               if bench.protocol.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=bench.protocol.seed))
    return optuna.create_study(study_name=f"{bench.name}/{method.name}", storage=storage,
                               sampler=sampler, direction="maximize", load_if_exists=True)


def _requeue_interrupted(study: Any) -> None:
    """Trials left RUNNING by a killed process are failed and their parameters re-queued."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=True)


def search_method(bench: BenchConfig, method: MethodConfig, train_table: SampleTable,
                  store: ResultsStore, out: Path, *, storage: str,
                  on_progress: Callable[[str, float], None] | None = None,
                  display: Any = None) -> dict[str, Any]:
    """Run the remaining search trials of ``method``; returns the best parameters.

    Objective: the mean over the k folds of the best validation ``protocol.objective``
    (early stopping and epoch choice on validation too). Methods without a search range
    run one trial with their fixed values.
    """
    import optuna

    ranges, fixed = split_search_space(method)
    study = create_study(bench, method, storage)
    _requeue_interrupted(study)
    planned = bench.protocol.trials if ranges else 1

    def objective(trial: Any) -> float:
        params = {**fixed, **{r.key: _suggest(trial, r) for r in ranges}}
        started = time.perf_counter()
        root = out / "runs" / method.name / "search" / params_key(params)

        def record_curve(fold: int, summary: dict[str, Any], config: RunConfig) -> None:
            curve = [(r["epoch"], r["validation"][bench.protocol.objective])
                     for r in summary["history"] if "validation" in r]
            store.add_curve(method.name, "search", trial.number, fold, curve)
            if on_progress is not None:
                on_progress("fold", math.nan)

        values = train_folds(bench, method, params, train_table, root, seed=bench.protocol.seed,
                             on_fold=record_curve, display=display)
        value = float(sum(values) / len(values))
        store.add_trial(method.name, trial.number, params, value, values,
                        time.perf_counter() - started)
        return value

    def completed() -> list[Any]:
        return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    while len(completed()) < planned:
        study.optimize(objective, n_trials=1, catch=())
        if on_progress is not None:
            on_progress("trial", study.best_value)
    best = study.best_trial
    return {**fixed, **best.params}
