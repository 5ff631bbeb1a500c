"""The results store of a benchmark: one SQLite file, ``DIR/results.sqlite``.

Tables (prefixed ``fairdml_`` so that an optuna study can live in the same file):

* ``fairdml_meta``: schema version, package version, git revision, the resolved preset.
* ``fairdml_trials``: one row per finished search trial (method, trial number, parameters,
  mean validation value, per-fold values, wall time).
* ``fairdml_runs``: one row per finished training or evaluation (method, stage, repeat,
  fold, seed, kind, split, metrics, resolved config, wall time). Kinds: ``fold`` (one
  model on validation or test), ``separated`` and ``concatenated`` (the k fold models of
  a repeat on test), ``baseline``.
* ``fairdml_epochs``: validation curves (method, stage, repeat/trial, fold, epoch, value).

Every write is one transaction, so a killed benchmark never leaves a half-written row, and
rows are only ever inserted (a re-run skips work whose row exists).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fairdml import __version__

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fairdml_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fairdml_trials (
    method TEXT NOT NULL, trial INTEGER NOT NULL, params TEXT NOT NULL, value REAL,
    fold_values TEXT NOT NULL, wall_seconds REAL NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (method, trial));
CREATE TABLE IF NOT EXISTS fairdml_runs (
    method TEXT NOT NULL, stage TEXT NOT NULL, repeat INTEGER NOT NULL, fold INTEGER NOT NULL,
    kind TEXT NOT NULL, split TEXT NOT NULL, seed INTEGER NOT NULL, metrics TEXT NOT NULL,
    config TEXT NOT NULL, wall_seconds REAL NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (method, stage, repeat, fold, kind, split));
CREATE TABLE IF NOT EXISTS fairdml_epochs (
    method TEXT NOT NULL, stage TEXT NOT NULL, index_ INTEGER NOT NULL, fold INTEGER NOT NULL,
    epoch INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (method, stage, index_, fold, epoch));
"""


class StoreError(RuntimeError):
    """A results store that cannot be used (another schema version, another preset)."""


def git_revision() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class ResultsStore:
    """Read and append benchmark results in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=60)
        self._connection.row_factory = sqlite3.Row
        with self._transaction() as cursor:
            cursor.executescript(_SCHEMA)
        self._check_schema()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of this file, for an optuna study stored beside the results."""
        return f"sqlite:///{self.path.resolve()}"

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cursor = self._connection.cursor()
        try:
            yield cursor
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            raise
        finally:
            cursor.close()

    def _check_schema(self) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
            self.set_meta("fairdml_version", __version__)
            self.set_meta("git_revision", git_revision())
        elif int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by fairdml {self.get_meta('fairdml_version')} with "
                f"results schema {version}; this fairdml ({__version__}) reads schema "
                f"{SCHEMA_VERSION}. Use another --out directory (nothing was changed).")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM fairdml_meta WHERE key = ?",
                                       (key,)).fetchone()
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("INSERT OR REPLACE INTO fairdml_meta VALUES (?, ?)", (key, value))

    def bind_preset(self, resolved: dict[str, Any]) -> None:
        """Record the preset on first use; refuse to mix results of another preset."""
        text = json.dumps(resolved, sort_keys=True)
        stored = self.get_meta("preset")
        if stored is None:
            self.set_meta("preset", text)
        elif stored != text:
            before, now = json.loads(stored), resolved
            keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise StoreError(
                f"{self.path} holds results of a different preset (differs in {keys}); "
                "use another --out directory or the same preset and overrides (nothing was "
                "changed)")

    # ------------------------------------------------------------------ trials
    def add_trial(self, method: str, trial: int, params: dict[str, Any], value: float,
                  fold_values: list[float], wall_seconds: float) -> None:
        with self._transaction() as cursor:
            cursor.execute("INSERT OR REPLACE INTO fairdml_trials VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (method, trial, json.dumps(params, sort_keys=True), value,
                            json.dumps(fold_values), wall_seconds, time.time()))

    def trials(self, method: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM fairdml_trials"
        rows = self._connection.execute(
            query + (" WHERE method = ? ORDER BY trial" if method else " ORDER BY method, trial"),
            (method,) if method else ()).fetchall()
        return [{**dict(row), "params": json.loads(row["params"]),
                 "fold_values": json.loads(row["fold_values"])} for row in rows]

    # ------------------------------------------------------------------ runs
    def add_run(self, *, method: str, stage: str, repeat: int, fold: int, kind: str,
                split: str, seed: int, metrics: dict[str, Any], config: dict[str, Any],
                wall_seconds: float) -> None:
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT OR REPLACE INTO fairdml_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (method, stage, repeat, fold, kind, split, seed, json.dumps(metrics),
                 json.dumps(config, sort_keys=True), wall_seconds, time.time()))

    def has_run(self, *, method: str, stage: str, repeat: int, fold: int, kind: str,
                split: str) -> bool:
        row = self._connection.execute(
            "SELECT 1 FROM fairdml_runs WHERE method=? AND stage=? AND repeat=? AND fold=? "
            "AND kind=? AND split=?", (method, stage, repeat, fold, kind, split)).fetchone()
        return row is not None

    def runs(self, **where: Any) -> list[dict[str, Any]]:
        clauses = " AND ".join(f"{key} = ?" for key in where)
        query = "SELECT * FROM fairdml_runs" + (f" WHERE {clauses}" if where else "")
        rows = self._connection.execute(query + " ORDER BY method, stage, repeat, fold",
                                        tuple(where.values())).fetchall()
        return [{**dict(row), "metrics": json.loads(row["metrics"]),
                 "config": json.loads(row["config"])} for row in rows]

    # ------------------------------------------------------------------ curves
    def add_curve(self, method: str, stage: str, index: int, fold: int,
                  values: list[tuple[int, float]]) -> None:
        with self._transaction() as cursor:
            cursor.executemany("INSERT OR REPLACE INTO fairdml_epochs VALUES (?, ?, ?, ?, ?, ?)",
                               [(method, stage, index, fold, epoch, value)
                                for epoch, value in values])

    def curves(self) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            "SELECT * FROM fairdml_epochs ORDER BY method, stage, index_, fold, epoch").fetchall()
        return [dict(row) for row in rows]
