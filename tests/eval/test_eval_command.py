"""The ``fairdml eval`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fairdml.cli import main


@pytest.fixture()
def npz(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=g.normal(size=(40, 5)).astype(np.float32),
             labels=g.integers(0, 6, 40))
    return path


def test_writes_json_and_refuses_to_overwrite(npz, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["eval", "--embeddings", str(npz), "--out", str(out), "--metrics", "recall",
            "map@r", "--recall-ks", "1", "5", "--no-progress"]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"recall@1", "recall@5", "map@r", "num_queries", "num_skipped_queries"}
    assert "recall@5" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):
        main(argv)
    assert main(argv + ["--force"]) == 0


def test_query_gallery_file_and_bad_keys(tmp_path):
    g = np.random.default_rng(1)
    path = tmp_path / "qg.npz"
    np.savez(path, embeddings=g.normal(size=(30, 4)), labels=g.integers(0, 3, 30),
             queries=g.normal(size=(10, 4)), query_labels=g.integers(0, 3, 10))
    out = tmp_path / "qg.json"
    assert main(["eval", "--embeddings", str(path), "--out", str(out), "--metrics",
                 "recall@1", "--no-progress"]) == 0
    assert json.loads(out.read_text())["num_queries"] == 10
    bad = tmp_path / "bad.npz"
    np.savez(bad, emb=np.zeros((3, 2)), labels=np.arange(3))
    with pytest.raises(KeyError, match="missing array"):
        main(["eval", "--embeddings", str(bad)])


def test_run_dir_dispatches_to_the_trainer(tmp_path, monkeypatch, capsys):
    calls = {}

    def evaluate_run(run_dir, **options):
        calls["run_dir"], calls["options"] = run_dir, options
        return {"map@r": 0.5, "num_queries": 3.0}

    # The trainer provides evaluate_run in fairdml.train.final.
    monkeypatch.setattr("fairdml.train.final.evaluate_run", evaluate_run)
    assert main(["eval", str(tmp_path), "--metrics", "map@r", "--distance", "euclidean"]) == 0
    assert calls["run_dir"] == str(tmp_path)
    assert calls["options"]["metrics"] == ["map@r"]
    assert calls["options"]["distance"] == "euclidean"
    assert "0.5000" in capsys.readouterr().out


def test_needs_exactly_one_source(npz, tmp_path):
    with pytest.raises(SystemExit, match="either RUN_DIR or --embeddings"):
        main(["eval"])
    with pytest.raises(SystemExit, match="either RUN_DIR or --embeddings"):
        main(["eval", str(tmp_path), "--embeddings", str(npz)])
