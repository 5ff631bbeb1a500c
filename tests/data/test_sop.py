"""Stanford Online Products loader on a miniature tree with the official index files."""

from __future__ import annotations

import pytest
from standard_trees import build_sop

from fairdml.data import load


@pytest.fixture(scope="module")
def sop_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sop")
    return root, build_sop(root)


def test_sop_official_split_and_super_labels(sop_root):
    root, counts = sop_root
    table = load("sop", root)
    train, test = table.with_split("train"), table.with_split("test")
    assert (len(train), len(test)) == (counts["train"], counts["test"])
    assert set(train.labels.tolist()) == set(range(1, 25))
    assert set(test.labels.tolist()) == set(range(25, 49))
    assert table.super_labels is not None
    assert set(table.super_labels.tolist()) == set(range(1, 13))
    # the super-class follows the class id in the fixture: (class - 1) % 12 + 1
    assert ((table.labels - 1) % 12 + 1 == table.super_labels).all()
    assert table.items[0].startswith("bicycle_final/")
    assert all(table.path(i).is_file() for i in range(len(table)))
    assert table.is_query.all() and table.is_gallery.all()


def test_sop_accepts_the_dataset_folder(sop_root):
    root, counts = sop_root
    assert len(load("sop", root / "Stanford_Online_Products")) == sum(counts.values())


def test_sop_bad_header_and_malformed_lines(tmp_path):
    build_sop(tmp_path, train_classes=2, test_classes=2)
    index = tmp_path / "Stanford_Online_Products" / "Ebay_test.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(["image_id class path", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"Ebay_test\.txt, line 1: expected the header"):
        load("sop", tmp_path)
    lines[2] = "5 3 three bicycle_final/x.JPG"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"Ebay_test\.txt, line 3: super_class_id"):
        load("sop", tmp_path)
    lines[2] = "5 3 bicycle_final/x.JPG"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 3: expected 4 fields"):
        load("sop", tmp_path)


def test_sop_overlapping_classes_are_refused(tmp_path):
    build_sop(tmp_path, train_classes=2, test_classes=2)
    index = tmp_path / "Stanford_Online_Products" / "Ebay_test.txt"
    lines = index.read_text().splitlines()
    first = lines[1].split()
    lines[1] = " ".join([first[0], "1", first[2], first[3]])
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="class-disjoint"):
        load("sop", tmp_path)
