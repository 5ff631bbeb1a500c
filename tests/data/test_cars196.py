"""Cars196 loader on a miniature tree with cars_annos.mat in the official struct layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from standard_trees import build_cars

from fairdml.data import load


@pytest.fixture(scope="module")
def cars_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cars")
    return root, build_cars(root)


def test_cars_split_is_classes_1_98_versus_99_196_and_ignores_the_test_field(cars_root):
    root, counts = cars_root
    table = load("cars196", root)
    train, test = table.with_split("train"), table.with_split("test")
    assert (len(train), len(test)) == (counts["train"], counts["test"])
    assert set(train.labels.tolist()) == set(range(1, 99))
    assert set(test.labels.tolist()) == set(range(99, 197))
    # the classification `test` flag alternates per image in the fixture: had it been used,
    # train would contain test classes
    assert table.summary()["train"]["classes"] == 98
    assert table.is_query.all() and table.is_gallery.all()
    assert all(table.path(i).is_file() for i in range(len(table)))
    assert table.items[0] == "car_ims/000001.jpg"


def test_cars_missing_annotation_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cars_annos\.mat"):
        load("cars196", tmp_path)


def test_cars_not_a_mat_file(tmp_path):
    (tmp_path / "cars_annos.mat").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        load("cars196", tmp_path)


def test_cars_missing_field_and_bad_class_are_named(tmp_path):
    annotations = np.zeros((1, 2), dtype=[("relative_im_path", object), ("test", object)])
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": annotations})
    with pytest.raises(ValueError, match=r"lacks the fields \['class'\]"):
        load("cars196", tmp_path)
    annotations = np.zeros((1, 2), dtype=[("relative_im_path", object), ("class", object)])
    annotations[0, 0] = ("car_ims/000001.jpg", 5)
    annotations[0, 1] = ("car_ims/000002.jpg", 197)
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": annotations})
    with pytest.raises(ValueError, match=r"annotations\(2\)\.class is 197"):
        load("cars196", tmp_path)
