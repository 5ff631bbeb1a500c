"""The `folder` source: class trees, train/test trees and CSV indexes with line-precise errors."""

from __future__ import annotations

import numpy as np
import pytest

import fairdml.data as data
from fairdml.data.sources.folder import CSVFormatError


def test_class_tree_first_half_of_sorted_classes_trains(basic_class_tree):
    (basic_class_tree / "notes.txt").write_text("not an image")
    (basic_class_tree / "a" / "readme.md").write_text("not an image")
    table = data.load("folder", basic_class_tree)
    assert len(table) == 14 and table.root == basic_class_tree
    assert set(table.with_split("train").labels.tolist()) == {"a", "b"}
    assert set(table.with_split("test").labels.tolist()) == {"c", "d"}
    assert table.items[0] == "a/000.png" and table.path(0).is_file()
    assert table.is_query.all() and table.is_gallery.all()


def test_class_tree_odd_class_count_and_nested_images(tmp_path, basic_write_png):
    for k, name in enumerate("pqrst"):
        basic_write_png(tmp_path / name / "sub" / f"{k}.png")
    basic_write_png(tmp_path / "p" / ".hidden.png")
    table = data.load("folder", tmp_path)
    assert len(table) == 5
    assert set(table.with_split("train").labels.tolist()) == {"p", "q", "r"}
    assert table.items[0] == "p/sub/0.png"


def test_train_test_tree_gives_the_split(tmp_path, basic_write_png):
    for name, split in (("x", "train"), ("y", "train"), ("z", "test")):
        for i in range(2):
            basic_write_png(tmp_path / split / name / f"{i}.png")
    table = data.load("folder", tmp_path)
    assert table.summary()["train"]["classes"] == 2
    assert set(table.with_split("test").labels.tolist()) == {"z"}
    basic_write_png(tmp_path / "test" / "x" / "9.png")
    with pytest.raises(ValueError, match=r"\['x'\] are in both train/ and test/"):
        data.load("folder", tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load("folder", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no images found"):
        data.load("folder", tmp_path)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "0.png").write_bytes(b"")
    with pytest.raises(ValueError, match="at least 2 classes, got 1 \\(class folders\\)"):
        data.load("folder", tmp_path)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        data.load("folder", tmp_path, download=True)
    with pytest.raises(ValueError, match="needs root"):
        data.load("folder")


def _write_csv(folder, text, name="dataset.csv"):
    path = folder / name
    path.write_text(text)
    return path


def test_csv_with_split_and_flags(basic_class_tree):
    csv_path = _write_csv(basic_class_tree, "path,label,split,is_query,is_gallery\n"
                          "a/000.png,1,train,1,1\n"
                          "a/001.png,1,train,true,yes\n"
                          "\n"
                          "b/000.png,16777217,test,1,0\n"
                          "b/001.png,16777217,test,0,1\n"
                          "c/000.png,16777216,test,no,TRUE\n")
    for root in (csv_path, basic_class_tree):  # the file, or its folder with dataset.csv
        table = data.load("folder", root)
        assert table.labels.dtype == np.int64
        assert table.labels.tolist() == [1, 1, 16777217, 16777217, 16777216]
        assert table.split.tolist() == ["train", "train", "test", "test", "test"]
        assert table.is_query.tolist() == [True, True, True, False, False]
        assert table.is_gallery.tolist() == [True, True, False, True, True]
        assert table.path(2) == basic_class_tree / "b/000.png"


def test_csv_without_split_uses_sorted_classes(basic_class_tree):
    csv_path = _write_csv(basic_class_tree, "label,path\nd,d/000.png\na,a/000.png\n"
                          "c,c/000.png\nb,b/000.png\n", name="mine.csv")
    table = data.load("folder", csv_path)
    assert table.labels.tolist() == ["d", "a", "c", "b"]
    assert table.split.tolist() == ["test", "train", "test", "train"]
    assert table.name == "mine"


@pytest.mark.parametrize("body, message", [
    ("", "the file is empty"),
    ("path,label\n", "no data rows"),
    ("path,lable\na/000.png,1\n", r"line 1 \(header\): missing column\(s\) \['label'\]; "
                                  r"unknown column\(s\) \['lable'\]"),
    ("path,label,is_querry\na/000.png,1,1\n", r"unknown column\(s\) \['is_querry'\]"),
    ("path,label\na/000.png,1\na/001.png\n", "line 3: 1 fields, expected 2"),
    ("path,label\na/000.png,1\na/nope.png,2\n", "line 3: image 'a/nope.png' not found"),
    ("path,label\na/000.png,1\n,2\n", "line 3: empty path"),
    ("path,label\na/000.png,\n", "line 2: empty label"),
    ("path,label,split\na/000.png,1,train\nb/000.png,2,val\n",
     "line 3: split 'val' is not 'train' or 'test'"),
    ("path,label,is_query\na/000.png,1,maybe\n", "line 2: is_query 'maybe' is not a boolean"),
    ("path,label\na/000.png,1\nb/000.png,2\na/000.png,1\n",
     "line 4: image 'a/000.png' is already listed on line 2"),
    ("path,label,split\na/000.png,1,train\nb/000.png,2,test\na/001.png,1,test\n",
     "line 4: class 1 is in split 'test' but line 2 puts it in 'train'"),
])
def test_csv_errors_name_file_and_line(basic_class_tree, body, message):
    csv_path = _write_csv(basic_class_tree, body, name="bad.csv")
    with pytest.raises(CSVFormatError, match=message) as error:
        data.load("folder", csv_path)
    assert "bad.csv" in str(error.value)


def test_csv_file_check_can_be_skipped(tmp_path):
    csv_path = _write_csv(tmp_path, "path,label\nlater/1.png,a\nlater/2.png,b\n")
    table = data.load("folder", csv_path, check_files=False)
    assert table.items.tolist() == ["later/1.png", "later/2.png"]


def test_non_csv_file_root_is_refused(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.png 1\n")
    with pytest.raises(ValueError, match="not a .csv"):
        data.load("folder", path)


def test_csv_without_split_needs_two_classes(basic_class_tree):
    csv_path = _write_csv(basic_class_tree, "path,label\na/000.png,1\na/001.png,1\n")
    with pytest.raises(CSVFormatError, match="dataset.csv: no split column, and .* 2 classes"):
        data.load("folder", csv_path)


def test_an_empty_class_folder_is_a_clear_error(basic_class_tree):
    (basic_class_tree / "e").mkdir()
    (basic_class_tree / "e" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*/e holds no image"):
        data.load("folder", basic_class_tree)
