"""CUB-200-2011 (Wah et al., Caltech-UCSD Birds, CNS-TR-2011-001) with the DML split.

11,788 images of 200 bird species. The metric-learning split is class-disjoint: classes
1-100 train (5,864 images), 101-200 test (5,924), every test image both query and gallery.
The per-image classification split ``train_test_split.txt`` is deliberately not read:
evaluating on it puts the same classes in train and test and gives incomparable numbers.

Files (ids are 1-based): ``images.txt`` ``<image_id> <path>`` with paths under
``images/NNN.Name/``, ``image_class_labels.txt`` ``<image_id> <class_id>``,
``classes.txt`` ``<class_id> <name>``. Labels keep the official class ids 1-200.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairdml.data import register
from fairdml.data.official import (
    OfficialDataset,
    RemoteFile,
    fetch,
    index_lines,
    split_fields,
    to_int,
)
from fairdml.data.resized import use_resized
from fairdml.data.table import SampleTable, same_set_table

LAST_TRAIN_CLASS = 100

INFO = OfficialDataset(
    name="cub200",
    description="CUB-200-2011 birds: 200 classes, 11,788 images (train 1-100 / test 101-200)",
    folder="CUB_200_2011",
    index_files=("images.txt", "image_class_labels.txt", "classes.txt"),
    expected={"train": {"images": 5864, "classes": 100},
              "test": {"images": 5924, "classes": 100}},
    remote_files=(
        RemoteFile(
            filename="CUB_200_2011.tgz",
            urls=(
                # CaltechDATA, the official home since the Visipedia site moved
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                # fast.ai's public S3 copy of the same tarball
                "https://s3.amazonaws.com/fast-ai-imageclas/CUB_200_2011.tgz",
                # the original Visipedia address (redirects or is gone, kept as a fall-back)
                "http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz",
            ),
            provides="CUB_200_2011/images.txt",
            extract=True,
            # size and SHA-256: tensorflow-datasets url_checksums/caltech_birds2011.txt
            # (the same tarball served from Google Drive); MD5: published by many loaders
            # (e.g. the torchvision-style Cub2011 datasets, avalanche's CUB200).
            size=1150585339,
            sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
            md5="97eceeb196236b17998738112f37df78",
            checksum_source="size+SHA-256: tensorflow-datasets; MD5: torchvision-style loaders",
        ),
    ),
)


@register("cub200")
def cub200(root: Path | None, *, download: bool = False, resized: int | str | None = "auto",
           progress: bool = True) -> SampleTable:
    """CUB-200-2011 birds with the class-disjoint split (train classes 1-100, test 101-200).

    ``root`` is the extracted ``CUB_200_2011`` folder or its parent; ``download=True``
    fetches and extracts the official tarball into ``root`` first. ``resized`` selects the
    resized-image cache (see `fairdml.data.resized`).
    """
    if download:
        fetch(INFO, root, progress=progress)
    folder = INFO.locate(root)
    paths = _id_map(folder / "images.txt", "<image_id> <path>", to_value=None)
    labels = _id_map(folder / "image_class_labels.txt", "<image_id> <class_id>",
                     to_value="class_id")
    classes = _id_map(folder / "classes.txt", "<class_id> <name>", to_value=None)
    if set(paths) != set(labels):
        only_images = sorted(set(paths) - set(labels))[:5]
        only_labels = sorted(set(labels) - set(paths))[:5]
        raise ValueError(
            f"{folder}: images.txt and image_class_labels.txt list different image ids "
            f"(only in images.txt: {only_images}, only in image_class_labels.txt: "
            f"{only_labels})"
        )
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise ValueError(
            f"{folder / 'image_class_labels.txt'}: class ids {unknown[:5]} are not in classes.txt"
        )
    ids = sorted(paths)
    items = [f"images/{paths[i]}" for i in ids]
    label_array = np.asarray([labels[i] for i in ids], dtype=np.int64)
    split = np.where(label_array <= LAST_TRAIN_CLASS, "train", "test")
    table = same_set_table(items, label_array, split, name="cub200", root=folder)
    return use_resized(table, resized)


def _id_map(path: Path, layout: str, *, to_value: str | None) -> dict[int, object]:
    """``{id: value}`` from a two-column index file; duplicate ids are an error."""
    out: dict[int, object] = {}
    for number, line in index_lines(path):
        key, value = split_fields(path, number, line, 2, layout, last_may_contain_spaces=True)
        identifier = to_int(path, number, key, layout.split()[0])
        if identifier in out:
            raise ValueError(f"{path}, line {number}: id {identifier} is listed twice")
        out[identifier] = value if to_value is None else to_int(path, number, value, to_value)
    return out
