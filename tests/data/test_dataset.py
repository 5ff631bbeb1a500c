"""`TableDataset` and `labels_to_indices`: exact targets, images from files and arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairdml.data import transforms
from fairdml.data.dataset import ImageReadError, TableDataset, labels_to_indices
from fairdml.data.table import same_set_table


def test_labels_to_indices_keeps_large_integer_ids_exact():
    labels = np.array([2**24 + 1, 2**24, 2**40 + 3, 2**24 + 1], dtype=np.int64)
    indices, classes = labels_to_indices(labels)
    assert indices.dtype == np.int64
    assert classes.tolist() == [2**24, 2**24 + 1, 2**40 + 3]
    assert indices.tolist() == [1, 0, 2, 1]
    np.testing.assert_array_equal(classes[indices], labels)


def test_labels_to_indices_strings_objects_and_tensors():
    indices, classes = labels_to_indices(np.array(["b/x", "a/y", "b/x"], dtype=object))
    assert classes.tolist() == ["a/y", "b/x"] and indices.tolist() == [1, 0, 1]
    indices, classes = labels_to_indices(torch.tensor([7, 3, 7]))
    assert classes.tolist() == [3, 7] and indices.tolist() == [1, 0, 1]
    indices, classes = labels_to_indices(np.array([3, "a", 1], dtype=object))
    assert classes.tolist() == [1, 3, "a"] and indices.tolist() == [1, 2, 0]


def test_labels_to_indices_refuses_floats_and_matrices():
    with pytest.raises(TypeError, match="float"):
        labels_to_indices(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        labels_to_indices(np.zeros((2, 2), dtype=np.int64))


def _array_table():
    images = np.arange(4 * 8 * 8, dtype=np.int64).reshape(4, 8, 8).astype(np.uint8)
    return same_set_table(images, np.array([10, 30, 10, 20]), ["train"] * 4)


def test_dataset_from_arrays_returns_tensors_and_contiguous_targets():
    dataset = TableDataset(_array_table(), transforms.create("digits", train=False,
                                                             in_channels=1))
    assert len(dataset) == 4
    image, target = dataset[1]
    assert isinstance(image, torch.Tensor) and image.shape == (1, 8, 8)
    assert target == 2  # classes sorted: 10, 20, 30
    assert dataset.targets.tolist() == [0, 2, 0, 1]
    # pixel values survive the PIL round trip: (v / 255 - 0.5) / 0.5
    raw = dataset.table.items[1].astype(np.float32) / 255
    np.testing.assert_allclose(image[0].numpy(), (raw - 0.5) / 0.5, atol=1e-6)


def test_dataset_image_mode_follows_the_transform():
    table = _array_table()
    rgb = TableDataset(table, transforms.create("digits", train=False, in_channels=3))
    assert rgb.image_mode == "RGB" and rgb[0][0].shape == (3, 8, 8)
    assert TableDataset(table, None).load_image(0).mode == "RGB"
    assert TableDataset(table, None, image_mode="L").load_image(0).mode == "L"
    with pytest.raises(ValueError, match="image_mode"):
        TableDataset(table, None, image_mode="CMYK")


def test_dataset_shared_label_mapping_and_missing_label():
    table = _array_table()
    dataset = TableDataset(table, None, label_to_index={10: 5, 20: 6, 30: 7})
    assert dataset.targets.tolist() == [5, 7, 5, 6]
    with pytest.raises(KeyError, match="30"):
        TableDataset(table, None, label_to_index={10: 0, 20: 1})


def test_dataset_reads_files_in_both_modes(tmp_path, basic_write_png):
    basic_write_png(tmp_path / "x" / "0.png", mode="RGB")
    basic_write_png(tmp_path / "y" / "0.png", mode="L")
    table = same_set_table(["x/0.png", "y/0.png"], ["x", "y"], ["train", "train"],
                           root=tmp_path)
    dataset = TableDataset(table, transforms.create("omniglot", train=False))
    image, target = dataset[1]
    assert image.shape == (3, 28, 28) and target == 1
    grey = TableDataset(table, transforms.create("omniglot", train=False, in_channels=1))
    assert grey[0][0].shape == (1, 28, 28)


def test_corrupt_and_missing_images_name_the_file(tmp_path, basic_write_png):
    good = basic_write_png(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    table = same_set_table(["corrupt.png", "truncated.png", "missing.png"], [0, 1, 2],
                           ["train"] * 3, root=tmp_path)
    dataset = TableDataset(table, None)
    for index, name in enumerate(["corrupt.png", "truncated.png", "missing.png"]):
        with pytest.raises(ImageReadError, match=name):
            dataset[index]


def test_dataset_checks_arrays_and_relative_paths():
    floats = same_set_table(np.zeros((2, 8, 8), dtype=np.float32), [0, 1], ["train"] * 2)
    with pytest.raises(TypeError, match="uint8"):
        TableDataset(floats, None)
    relative = same_set_table(["a.png"], [0], ["train"])
    with pytest.raises(ValueError, match="no root"):
        TableDataset(relative, None)


def test_dataset_works_in_a_dataloader_with_the_sampler():
    from fairdml.data.samplers import ClassBalancedBatchSampler

    images = np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8)
    labels = np.repeat(np.arange(6), 4)
    table = same_set_table(images, labels, ["train"] * 24)
    dataset = TableDataset(table, transforms.create("digits", train=True))
    sampler = ClassBalancedBatchSampler(dataset.targets, 3, 2)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler)
    images_batch, targets = batches[0]
    assert images_batch.shape == (6, 3, 8, 8) and targets.dtype == torch.int64
    assert sorted(torch.bincount(targets, minlength=6).tolist()) == [0, 0, 0, 2, 2, 2]
