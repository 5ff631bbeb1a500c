"""CUB-200-2011 loader on a miniature official tree (all 200 classes, 1-2 images each)."""

from __future__ import annotations

import numpy as np
import pytest
from standard_trees import build_cub, images_per_class

from fairdml.data import load


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    return root, build_cub(root)


def test_cub_class_disjoint_split_uses_classes_not_the_classification_split(cub_root):
    root, counts = cub_root
    table = load("cub200", root)
    train, test = table.with_split("train"), table.with_split("test")
    assert len(train) == counts["train"] and len(test) == counts["test"]
    assert set(train.labels.tolist()) == set(range(1, 101))
    assert set(test.labels.tolist()) == set(range(101, 201))
    assert table.is_query[table.split == "test"].all()
    assert table.is_gallery[table.split == "test"].all()
    for class_id in (1, 2, 150):
        assert (table.labels == class_id).sum() == images_per_class(class_id)


def test_cub_accepts_the_dataset_folder_itself_and_paths_resolve(cub_root):
    root, _ = cub_root
    table = load("cub200", root / "CUB_200_2011")
    assert table.root == root / "CUB_200_2011"
    assert all(table.path(i).is_file() for i in range(len(table)))
    assert table.items[0].startswith("images/001.")
    assert np.issubdtype(table.labels.dtype, np.integer)


def test_cub_wrong_root_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images\.txt.*CUB_200_2011"):
        load("cub200", tmp_path)
    with pytest.raises(ValueError, match="needs a root"):
        load("cub200", None)


def test_cub_missing_index_file_is_named(tmp_path):
    build_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.txt"):
        load("cub200", tmp_path)


def test_cub_malformed_line_gives_file_and_line_number(tmp_path):
    build_cub(tmp_path)
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[6] = "7 seven"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"image_class_labels\.txt, line 7: class_id"):
        load("cub200", tmp_path)


def test_cub_inconsistent_ids_are_reported(tmp_path):
    build_cub(tmp_path)
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="different image ids"):
        load("cub200", tmp_path)
