"""In-Shop Clothes Retrieval loader on a miniature list_eval_partition.txt tree."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from standard_trees import build_inshop

from fairdml.data import load


@pytest.fixture(scope="module")
def inshop_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("inshop")
    return root, build_inshop(root)


def test_inshop_query_and_gallery_flags(inshop_root):
    root, counts = inshop_root
    table = load("inshop", root)
    test = table.split == "test"
    assert (table.split == "train").sum() == counts["train"]
    assert (test & table.is_query).sum() == counts["query"]
    assert (test & table.is_gallery).sum() == counts["gallery"]
    assert not (test & table.is_query & table.is_gallery).any()
    train = table.split == "train"
    assert table.is_query[train].all() and table.is_gallery[train].all()
    summary = table.summary()
    assert summary["train"]["classes"] == 10 and summary["test"]["classes"] == 8
    assert set(table.labels[train].tolist()) == set(range(1, 11))
    assert set(table.labels[test].tolist()) == set(range(11, 19))
    assert np.issubdtype(table.labels.dtype, np.integer)
    assert all(table.path(i).is_file() for i in range(len(table)))


def test_inshop_index_in_eval_subfolder(tmp_path):
    counts = build_inshop(tmp_path)
    (tmp_path / "Eval").mkdir()
    shutil.move(tmp_path / "list_eval_partition.txt", tmp_path / "Eval")
    table = load("inshop", tmp_path)
    assert len(table) == sum(counts.values())
    assert table.root == tmp_path and table.path(0).is_file()


def test_inshop_download_explains_the_manual_step(tmp_path):
    with pytest.raises(RuntimeError, match="by hand"):
        load("inshop", tmp_path, download=True)


@pytest.mark.parametrize(("line_index", "text", "message"), [
    (0, "lots", "line 1: the number of images"),
    (1, "image_name item evaluation_status", "line 2: expected the header"),
    (3, "img/a.jpg id_00000001 validation", "line 4: evaluation_status"),
    (3, "img/a.jpg item_1 train", "line 4: item_id"),
    (3, "img/a.jpg train", "line 4: expected 3 fields"),
])
def test_inshop_malformed_lines(tmp_path, line_index, text, message):
    build_inshop(tmp_path, train_items=2, test_items=2)
    index = tmp_path / "list_eval_partition.txt"
    lines = index.read_text().splitlines()
    lines[line_index] = text
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        load("inshop", tmp_path)


def test_inshop_count_line_must_match_rows(tmp_path):
    build_inshop(tmp_path, train_items=2, test_items=2)
    index = tmp_path / "list_eval_partition.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="declares"):
        load("inshop", tmp_path)
