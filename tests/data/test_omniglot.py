"""The `omniglot` source: zip, folder of zips or extracted tree; cached safe extraction."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest

import fairdml.data as data
from fairdml.data.dataset import TableDataset
from fairdml.data.sources import omniglot as omniglot_source


def _zip_tree(tree, archive, top):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*.png")):
            zf.write(path, f"{top}/{path.relative_to(tree).as_posix()}")
    return archive


def test_shared_zip_counts_split_and_labels(shared_omniglot_zip, shared_omniglot_cache):
    table = data.load("omniglot", shared_omniglot_zip, cache_dir=shared_omniglot_cache)
    assert len(table) == 3120
    assert len(table.classes()) == 156
    assert table.summary() == {
        "train": {"images": 1560, "classes": 78, "queries": 1560, "gallery": 1560},
        "test": {"images": 1560, "classes": 78, "queries": 1560, "gallery": 1560},
    }
    table.check_class_disjoint()
    alphabets = {label.split("/")[0] for label in table.labels.tolist()}
    assert len(alphabets) == 5
    assert all(np.bincount(np.unique(table.labels, return_inverse=True)[1]) == 20)
    keys = lambda labels: {tuple(label.split("/")) for label in labels.tolist()}  # noqa: E731
    assert max(keys(table.with_split("train").labels)) < min(keys(table.with_split("test").labels))
    first = table.path(0)
    assert first.is_file() and first.suffix == ".png"
    assert str(first).startswith(str(shared_omniglot_cache))
    assert table.labels[0] == f"{first.parent.parent.name}/{first.parent.name}"


def test_shared_zip_is_extracted_once_and_reads_as_images(shared_omniglot_zip,
                                                          shared_omniglot_cache):
    data.load("omniglot", shared_omniglot_zip, cache_dir=shared_omniglot_cache)
    extracted = sorted((shared_omniglot_cache / "omniglot").iterdir())
    assert len(extracted) == 1 and extracted[0].name.startswith("images_background_small2-")
    stamp = extracted[0].stat().st_mtime_ns
    table = data.load("omniglot", shared_omniglot_zip.parent, cache_dir=shared_omniglot_cache)
    assert len(table) == 3120
    assert extracted[0].stat().st_mtime_ns == stamp
    image = TableDataset(table, None, image_mode="L").load_image(0)
    assert image.size == (105, 105)


def test_extracted_tree_and_folder_of_trees(basic_omniglot_tree, tmp_path):
    table = data.load("omniglot", basic_omniglot_tree, cache_dir=tmp_path / "cache")
    assert len(table) == 24
    assert set(table.with_split("train").labels.tolist()) == {
        "Alpha/character01", "Alpha/character02", "Alpha/character03"}
    container = tmp_path / "container"
    container.mkdir()
    shutil.copytree(basic_omniglot_tree, container / "images_background")
    again = data.load("omniglot", container, cache_dir=tmp_path / "cache")
    assert again.labels.tolist() == table.labels.tolist()
    assert not (tmp_path / "cache").exists()  # nothing to extract


def test_zip_and_tree_are_combined_without_duplicates(basic_omniglot_tree, tmp_path):
    container = tmp_path / "container"
    container.mkdir()
    shutil.copytree(basic_omniglot_tree, container / "images_background")
    other = tmp_path / "other"
    for c in (1, 2):
        for d in range(3):
            src = next((basic_omniglot_tree / "Alpha" / "character01").iterdir())
            (other / "Gamma" / f"character{c:02d}").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, other / "Gamma" / f"character{c:02d}" / f"{d}.png")
    _zip_tree(other, container / "images_evaluation.zip", "images_evaluation")
    _zip_tree(basic_omniglot_tree, container / "images_background.zip", "images_background")
    table = data.load("omniglot", container, cache_dir=tmp_path / "cache")
    assert len(table) == 24 + 6  # images_background.zip is skipped: its folder is there
    assert len(table.classes()) == 8
    assert [p.name for p in (tmp_path / "cache" / "omniglot").iterdir()][0].startswith(
        "images_evaluation-")
    shutil.copytree(basic_omniglot_tree, container / "copy")
    with pytest.raises(ValueError, match="Alpha/character01 appears in both"):
        data.load("omniglot", container, cache_dir=tmp_path / "cache")


def test_cache_location_from_environment(basic_omniglot_tree, tmp_path, monkeypatch):
    archive = _zip_tree(basic_omniglot_tree, tmp_path / "mini.zip", "mini")
    monkeypatch.setenv("FAIRDML_CACHE", str(tmp_path / "envcache"))
    table = data.load("omniglot", archive)
    assert len(table) == 24
    assert str(table.path(0)).startswith(str(tmp_path / "envcache" / "omniglot" / "mini-"))
    assert omniglot_source.cache_root() == tmp_path / "envcache"


def test_unsafe_zip_is_refused_and_leaves_no_cache(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/A/c1/1.png", b"x")
        zf.writestr("../escaped.png", b"x")
    with pytest.raises(ValueError, match="'..'"):
        data.load("omniglot", archive, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "escaped.png").exists()
    assert list((tmp_path / "cache" / "omniglot").iterdir()) == []


def test_root_errors(tmp_path):
    with pytest.raises(ValueError, match="omniglot needs root"):
        data.load("omniglot")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load("omniglot", tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .zip"):
        data.load("omniglot", tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no Omniglot images"):
        data.load("omniglot", tmp_path)
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("readme.txt", b"no images")
    with pytest.raises(ValueError, match="holds no <alphabet>/<character>/\\*.png tree"):
        data.load("omniglot", empty_zip, cache_dir=tmp_path / "cache")


def test_download_fetches_missing_official_zips(basic_omniglot_tree, tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    _zip_tree(basic_omniglot_tree, server / "images_background.zip", "images_background")
    other = tmp_path / "eval_tree"
    shutil.copytree(basic_omniglot_tree / "Beta", other / "Zeta")
    _zip_tree(other, server / "images_evaluation.zip", "images_evaluation")
    target = tmp_path / "data"
    table = data.load("omniglot", target, download=True, base_url=server.as_uri(),
                      cache_dir=tmp_path / "cache")
    assert sorted(os.listdir(target)) == ["images_background.zip", "images_evaluation.zip"]
    assert len(table) == 36 and len(table.classes()) == 9
    (server / "images_background.zip").unlink()  # present locally: not fetched again
    assert len(data.load("omniglot", target, download=True, base_url=server.as_uri(),
                         cache_dir=tmp_path / "cache")) == 36


def test_download_failure_is_a_clear_error(tmp_path):
    from fairdml.data.download import DownloadError

    with pytest.raises(DownloadError, match="images_background.zip"):
        data.load("omniglot", tmp_path / "data", download=True,
                  base_url=(tmp_path / "no-server").as_uri(), cache_dir=tmp_path / "cache")


def test_official_split_follows_background_and_evaluation(basic_omniglot_tree, tmp_path):
    container = tmp_path / "container"
    shutil.copytree(basic_omniglot_tree / "Beta", container / "images_background" / "Beta")
    shutil.copytree(basic_omniglot_tree / "Alpha", container / "images_evaluation" / "Alpha")
    half = data.load("omniglot", container)
    assert set(half.with_split("train").labels.tolist()) == {
        f"Alpha/character0{c}" for c in (1, 2, 3)}
    official = data.load("omniglot", container, split="official")
    assert set(official.with_split("train").labels.tolist()) == {
        f"Beta/character0{c}" for c in (1, 2, 3)}
    with pytest.raises(ValueError, match="images_background"):
        data.load("omniglot", basic_omniglot_tree, split="official")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("omniglot", basic_omniglot_tree, split="lake")
