"""The benchmark protocol: search on folds, sealed test split, store, resume, bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fairdml import data
from fairdml.bench.config import BenchConfig
from fairdml.bench.protocol import run_benchmark
from fairdml.bench.store import SCHEMA_VERSION, ResultsStore, StoreError
from fairdml.config import ConfigError, load_config

TINY = ["protocol.trials=2", "protocol.repeats=2", "run.train.epochs=1",
        "run.train.iterations_per_epoch=2", "run.model.embedding_dim=8",
        "protocol.baselines=false", "run.eval.kmeans_seeds=[0]"]


def tiny_bench(*overrides, methods=("contrastive",)):
    bench = load_config("bench/demo", [*TINY, *overrides], cls=BenchConfig)
    bench.methods = [m for m in bench.methods if m.name in methods]
    return bench


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_search_never_reads_a_test_item(tmp_path, digits, monkeypatch):
    """Every image read before the final test belongs to the training split."""
    from fairdml.bench import protocol, sealed
    from fairdml.data import dataset

    reads, phase = [], ["search"]
    original = dataset.TableDataset.__getitem__

    def recording_getitem(self, index):
        reads.append((phase[0], str(self.table.split[index])))
        return original(self, index)

    monkeypatch.setattr(dataset.TableDataset, "__getitem__", recording_getitem)
    original_repeat = sealed.SealedTest.evaluate_repeat

    def mark_final(self, *args, **kwargs):
        phase[0] = "final"
        try:
            return original_repeat(self, *args, **kwargs)
        finally:
            phase[0] = "search"

    monkeypatch.setattr(sealed.SealedTest, "evaluate_repeat", mark_final)
    protocol.run_benchmark(tiny_bench(), digits, tmp_path / "bench", progress=False)
    search_splits = {split for phase_name, split in reads if phase_name == "search"}
    final_splits = {split for phase_name, split in reads if phase_name == "final"}
    assert search_splits == {"train"}
    assert final_splits == {"test"}


def test_sealed_test_exposes_no_items(digits):
    from fairdml.bench.sealed import SealedTest

    sealed = SealedTest(digits)
    public = [name for name in dir(sealed) if not name.startswith("_")]
    assert public == ["evaluate_repeat", "evaluate_untrained"]
    assert list(vars(sealed)) == ["_SealedTest__table"]  # held privately, no public handle


def test_benchmark_records_trials_repeats_and_curves(tmp_path, digits):
    store = run_benchmark(tiny_bench("protocol.baselines=true"), digits, tmp_path / "bench",
                          progress=False)
    trials = store.trials("contrastive")
    assert len(trials) == 2
    assert all(len(t["fold_values"]) == 2 for t in trials)
    for kind in ("separated", "concatenated"):
        runs = store.runs(method="contrastive", kind=kind, split="test")
        assert [r["repeat"] for r in runs] == [0, 1]
        assert 0 <= runs[0]["metrics"]["map@r"] <= 1
    folds = store.runs(method="contrastive", kind="fold", split="test", repeat=0)
    separated = store.runs(method="contrastive", kind="separated", repeat=0)[0]["metrics"]
    assert separated["map@r"] == pytest.approx(sum(f["metrics"]["map@r"] for f in folds) / 2)
    baselines = {r["method"] for r in store.runs(stage="baseline")}
    assert baselines == {"untrained trunk", "trunk + untrained head"}
    assert store.curves()
    assert store.get_meta("git_revision")


def test_a_restart_does_not_redo_finished_work(tmp_path, digits):
    out = tmp_path / "bench"
    store = run_benchmark(tiny_bench(), digits, out, progress=False)
    before = {(t["trial"], t["created"]) for t in store.trials()}
    runs_before = {(r["repeat"], r["kind"], r["created"]) for r in store.runs(split="test")}
    store.close()
    store = run_benchmark(tiny_bench(), digits, out, progress=False)
    assert {(t["trial"], t["created"]) for t in store.trials()} == before
    assert {(r["repeat"], r["kind"], r["created"]) for r in store.runs(split="test")} == \
        runs_before


def test_killed_benchmark_resumes(tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "fairdml.cli", "bench", "bench/demo", *TINY,
               "protocol.trials=3", "--out", str(out), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    database = out / "results.sqlite"
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for the first finished trial, then kill
        if database.is_file():
            try:
                with sqlite3.connect(database, timeout=1) as connection:
                    if connection.execute("SELECT COUNT(*) FROM fairdml_trials").fetchone()[0]:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with sqlite3.connect(database) as connection:
        first = connection.execute("SELECT method, trial, created FROM fairdml_trials").fetchall()
    assert first, "the benchmark was killed before finishing a trial"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    store = ResultsStore(database)
    rows = {(t["method"], t["trial"], t["created"]) for t in store.trials()}
    assert set(first) <= rows  # finished trials were kept, not redone
    methods = {m for m, _, _ in rows}
    for method in methods:
        assert len(store.trials(method)) >= 3
        assert len(store.runs(method=method, kind="concatenated")) == 2


@pytest.mark.parametrize("overrides, message", [
    (["methods=[{name: a, loss: no_such_loss}]"], "unknown loss 'no_such_loss'"),
    (["methods=[{name: a, loss: contrastive, search: {optim.lr: {low: 1, high: 0.1}}}]"],
     "empty or inverted range"),
    (["methods=[{name: a, loss: contrastive, search: {optim.lr: {low: 0, high: 1, "
      "scale: log}}}]"], "log range needs low > 0"),
    (["methods=[{name: a, loss: contrastive, search: {optim.nope: 0.1}}]"],
     "unknown config key 'optim.nope'"),
])
def test_bad_presets_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("bench/demo", overrides, cls=BenchConfig)


def test_too_few_classes_for_the_folds(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fairdml.cli", "bench", "bench/demo",
                           "protocol.num_folds=4", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "too few training classes for 4 class-disjoint folds" in done.stderr
    assert not (tmp_path / "b" / "results.sqlite").exists()


def test_incompatible_store_is_refused_and_untouched(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).set_meta("schema_version", str(SCHEMA_VERSION + 1))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="results schema"):
        ResultsStore(path)
    assert path.read_bytes() == before


def test_store_refuses_another_preset(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    store.bind_preset({"a": 1})
    with pytest.raises(StoreError, match="different preset"):
        store.bind_preset({"a": 2})
    assert json.loads(store.get_meta("preset")) == {"a": 1}


@pytest.mark.parametrize("preset", ["bench/demo", "bench/omniglot", "bench/mlrc_cub200",
                                    "bench/mlrc_cars196", "bench/mlrc_sop"])
def test_shipped_presets_are_valid(preset):
    bench = load_config(preset, cls=BenchConfig)
    assert bench.methods


def test_omniglot_preset_covers_every_registered_loss():
    from fairdml import losses

    bench = load_config("bench/omniglot", cls=BenchConfig)
    assert {m.loss for m in bench.methods} == set(losses.names())
