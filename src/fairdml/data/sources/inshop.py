"""In-Shop Clothes Retrieval (Liu et al., "DeepFashion", CVPR 2016).

52,712 images of 7,982 clothing items. ``list_eval_partition.txt``: line 1 the number of
images, line 2 the header ``image_name item_id evaluation_status``, then one row per image
``img/WOMEN/.../id_00000002/02_1_front.jpg id_00000002 train|query|gallery``. Train: 3,997
items / 25,882 images; test: 3,985 items with 14,218 query and 12,612 gallery images.

Conventions of this loader:

- labels are the item ids parsed to integers (``id_00000002`` -> 2), a one-to-one mapping,
  so labels compare exactly as the strings would and work as tensors;
- test rows: query rows have ``is_query`` only, gallery rows ``is_gallery`` only, so that
  queries search the gallery alone, as the benchmark prescribes;
- train rows have both flags set: within the training items evaluation is same-set
  (leave-one-out), which is what validation folds drawn from them use.

The root is the folder holding ``list_eval_partition.txt`` and ``img/`` (the index may also
sit in ``Eval/`` as in the DeepFashion distribution). DeepFashion is distributed through
Google Drive after accepting its licence, so there is no automatic download.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fairdml.data import register
from fairdml.data.official import (
    OfficialDataset,
    check_header,
    fetch,
    index_lines,
    split_fields,
    to_int,
)
from fairdml.data.resized import use_resized
from fairdml.data.table import SampleTable

INDEX = "list_eval_partition.txt"
HEADER = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
ITEM_ID = re.compile(r"id_(\d+)")

INFO = OfficialDataset(
    name="inshop",
    description="DeepFashion In-Shop: 7,982 clothing items, 52,712 images, query/gallery test",
    folder="",
    index_files=(INDEX,),
    expected={"train": {"images": 25882, "classes": 3997},
              "test": {"images": 26830, "classes": 3985, "queries": 14218, "gallery": 12612}},
    manual_download=(
        "download 'In-shop Clothes Retrieval Benchmark' by hand from the DeepFashion page "
        "(https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html; Google "
        "Drive, licence agreement required), unzip Img/img.zip and put img/ next to "
        f"{INDEX} (or Eval/{INDEX})"
    ),
)


@register("inshop")
def inshop(root: Path | None, *, download: bool = False, resized: int | str | None = "auto",
           progress: bool = True) -> SampleTable:
    """In-Shop Clothes Retrieval with the official train / query / gallery partition.

    ``download=True`` raises with instructions: the data set must be fetched by hand.
    """
    if download and not _has_index(root):
        fetch(INFO, root, progress=progress)  # raises with the manual instructions
    folder, index = _locate(root)
    lines = index_lines(index)
    if len(lines) < 2:
        raise ValueError(
            f"{index}: expected the image count on line 1 and the header "
            f"`{' '.join(HEADER)}` on line 2, the file has {len(lines)} non-empty line(s)"
        )
    declared = to_int(index, lines[0][0], lines[0][1], "the number of images")
    check_header(index, *lines[1], HEADER)
    rows = lines[2:]
    if declared != len(rows):
        raise ValueError(
            f"{index}: line 1 declares {declared:,} images but {len(rows):,} rows follow "
            "(truncated or edited file)"
        )
    items, labels, status = [], [], []
    for number, line in rows:
        image, item, state = split_fields(index, number, line, 3, " ".join(HEADER))
        match = ITEM_ID.fullmatch(item)
        if match is None:
            raise ValueError(
                f"{index}, line {number}: item_id must look like 'id_00000002', got {item!r}"
            )
        if state not in STATUSES:
            raise ValueError(
                f"{index}, line {number}: evaluation_status must be one of {STATUSES}, "
                f"got {state!r}"
            )
        items.append(image)
        labels.append(int(match.group(1)))
        status.append(state)
    status_array = np.asarray(status)
    train = status_array == "train"
    table = SampleTable(items=items, labels=np.asarray(labels, dtype=np.int64),
                        split=np.where(train, "train", "test"),
                        is_query=train | (status_array == "query"),
                        is_gallery=train | (status_array == "gallery"),
                        root=folder, name="inshop")
    return use_resized(table, resized)


def _has_index(root: Path | None) -> bool:
    return root is not None and any(
        (Path(root) / sub / INDEX).is_file() for sub in ("", "Eval"))


def _locate(root: Path | None) -> tuple[Path, Path]:
    """(folder the image paths are relative to, index file)."""
    if root is not None and (Path(root) / "Eval" / INDEX).is_file():
        return Path(root), Path(root) / "Eval" / INDEX
    folder = INFO.locate(root)
    return folder, folder / INDEX
