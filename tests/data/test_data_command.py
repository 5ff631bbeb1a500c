"""``fairdml data list|prepare|check`` and the resized-image cache, on miniature trees."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image
from standard_trees import build_cars, build_cub, build_inshop, build_sop, corrupt_image

from fairdml.cli import main
from fairdml.data import load
from fairdml.data.check import check_tree, compare_counts
from fairdml.data.sources import cub200 as cub_module

BUILDERS = {"cub200": build_cub, "cars196": build_cars, "sop": build_sop,
            "inshop": build_inshop}


def test_list_shows_every_data_set_and_whether_it_needs_a_root(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("cub200", "cars196", "sop", "inshop", "digits"):
        assert name in out
    assert "11,788 images" in out


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_check_names_the_counts_that_differ_from_the_official_ones(name, tmp_path, capsys):
    BUILDERS[name](tmp_path)
    assert main(["data", "check", name, "--root", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "count differs from the official data set: train images: expected" in out
    assert "summary per split" in out


def test_check_passes_when_counts_match_and_reports_corrupt_and_missing_images(
        tmp_path, capsys, monkeypatch):
    counts = build_cub(tmp_path)
    expected = {"train": {"images": counts["train"], "classes": 100},
                "test": {"images": counts["test"], "classes": 100}}
    monkeypatch.setattr(cub_module, "INFO",
                        dataclasses.replace(cub_module.INFO, expected=expected))
    assert main(["data", "check", "cub200", "--root", str(tmp_path), "--workers", "2"]) == 0
    assert "cub200: OK" in capsys.readouterr().out

    table = load("cub200", tmp_path)
    broken, gone = table.path(3), table.path(17)
    corrupt_image(broken)
    gone.unlink()
    report = check_tree("cub200", tmp_path, workers=2, progress=False)
    assert not report.ok and report.count_differences == []
    assert report.missing == [str(gone)]
    assert len(report.corrupt) == 1 and report.corrupt[0].startswith(str(broken))
    assert main(["data", "check", "cub200", "--root", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"image does not decode: {broken}" in out
    assert f"missing image: {gone}" in out


def test_check_of_a_wrong_root_is_bad_input(tmp_path, capsys):
    assert main(["data", "check", "sop", "--root", str(tmp_path)]) == 2
    assert "Ebay_train.txt" in capsys.readouterr().out


def test_compare_counts_lists_each_difference():
    found = {"test": {"images": 10, "queries": 4, "gallery": 6, "classes": 3}}
    want = {"test": {"images": 10, "queries": 5, "gallery": 6}, "train": {"images": 1}}
    assert compare_counts(found, want) == ["test queries: expected 5, found 4",
                                           "train images: missing"]


def test_prepare_resize_writes_a_cache_that_the_loader_uses(tmp_path, capsys):
    build_sop(tmp_path, train_classes=3, test_classes=3)
    folder = tmp_path / "Stanford_Online_Products"
    original = load("sop", tmp_path)
    big = folder / original.items[0]
    Image.new("RGB", (600, 400), (10, 20, 30)).save(big, format="JPEG")
    assert main(["data", "prepare", "sop", "--root", str(tmp_path), "--resize", "256",
                 "--workers", "1"]) == 0
    table = load("sop", tmp_path)
    assert all(item.startswith("resized256/") for item in table.items)
    assert (table.labels == original.labels).all()
    with Image.open(table.path(0)) as image:
        assert image.size == (384, 256)  # torchvision Resize(256): int(256 * 600 / 400)
    small_original = (folder / original.items[1]).read_bytes()
    assert table.path(1).read_bytes() == small_original  # already small: copied as is
    assert all(item.startswith("bicycle") for item in load("sop", tmp_path,
                                                            resized=None).items[:1])
    with pytest.raises(FileNotFoundError, match="--resize 288"):
        load("sop", tmp_path, resized=288)


def test_incomplete_cache_is_ignored(tmp_path):
    build_inshop(tmp_path, train_items=2, test_items=2)
    table = load("inshop", tmp_path)
    (tmp_path / "resized256").mkdir()
    assert (load("inshop", tmp_path).items == table.items).all()


def test_prepare_resize_is_refused_for_other_sources(capsys):
    assert main(["data", "prepare", "digits", "--root", ".", "--resize", "256"]) == 2
    assert "standard data sets only" in capsys.readouterr().out


MLRC_RECALL_KS = {"cub200": [1, 2, 4, 8], "cars196": [1, 2, 4, 8], "sop": [1, 10, 100, 1000],
                  "inshop": [1, 10, 20, 30, 40]}


@pytest.mark.parametrize("name", sorted(MLRC_RECALL_KS))
def test_mlrc_presets_follow_the_reality_check_protocol(name):
    from pathlib import Path

    from fairdml import losses
    from fairdml.config import load_config
    from fairdml.data import transforms
    from fairdml.models.trunks import TRUNKS

    preset = Path(__file__).resolve().parents[2] / "configs" / "mlrc" / f"{name}.yaml"
    config = load_config(preset)
    assert config.data.name == name
    assert config.eval.recall_ks == MLRC_RECALL_KS[name]
    assert (config.data.classes_per_batch, config.data.samples_per_class) == (8, 4)
    assert config.data.batch_size == 32 and config.data.num_folds == 4
    assert (config.data.resize_size, config.data.crop_size) == (256, 227)
    assert config.data.transform in transforms.names()
    assert config.model.embedding_dim == 128 and config.model.freeze_batchnorm
    assert config.model.trunk in TRUNKS
    assert config.loss.name in losses.names()
    assert (config.optim.name, config.optim.lr) == ("rmsprop", 1e-6)
    assert config.eval.val_metric == "map@r"


def test_resized_cache_in_parallel_on_cub(tmp_path):
    from fairdml.data.resized import write_resized

    build_cub(tmp_path)
    table = load("cub200", tmp_path)
    write_resized(table, 6, workers=2, progress=False)
    cached = load("cub200", tmp_path, resized=6)
    assert len(cached) == len(table) and (cached.labels == table.labels).all()
    for index in (0, len(cached) - 1):
        with Image.open(cached.path(index)) as image:
            assert image.size == (8, 6)  # 12x9 -> shorter side 6, longer int(6 * 12 / 9)
    assert (load("cub200", tmp_path).items == table.items).all()  # "auto" means 256 only
