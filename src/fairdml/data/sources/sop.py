"""Stanford Online Products (Oh Song et al., "Deep Metric Learning via Lifted Structured
Feature Embedding", CVPR 2016).

120,053 eBay product images of 22,634 products (classes) in 12 super-classes. The split
is the official one: ``Ebay_train.txt`` (11,318 classes, ids 1-11,318, 59,551 images) and
``Ebay_test.txt`` (11,316 classes, 60,502 images), each with the header
``image_id class_id super_class_id path`` and paths like ``bicycle_final/111085122871_0.JPG``
relative to the ``Stanford_Online_Products`` folder. Every test image is both query and
gallery. Labels keep the official class ids; super-class ids go to ``super_labels``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairdml.data import register
from fairdml.data.official import (
    OfficialDataset,
    RemoteFile,
    check_header,
    fetch,
    index_lines,
    split_fields,
    to_int,
)
from fairdml.data.resized import use_resized
from fairdml.data.table import SampleTable, same_set_table

HEADER = ("image_id", "class_id", "super_class_id", "path")
FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}

INFO = OfficialDataset(
    name="sop",
    description="Stanford Online Products: 22,634 products in 12 super-classes, 120,053 images",
    folder="Stanford_Online_Products",
    index_files=tuple(FILES.values()),
    expected={"train": {"images": 59551, "classes": 11318},
              "test": {"images": 60502, "classes": 11316}},
    remote_files=(
        RemoteFile(
            filename="Stanford_Online_Products.zip",
            urls=(
                "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                # the Google Drive copy linked from the authors' repository
                # (github.com/rksltnl/Deep-Metric-Learning-CVPR16)
                "https://drive.usercontent.google.com/download?"
                "id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8&export=download&confirm=t",
            ),
            provides="Stanford_Online_Products/Ebay_train.txt",
            extract=True,
            # size and SHA-256: tensorflow-datasets url_checksums/stanford_online_products.txt;
            # MD5: published by many loaders (e.g. PML 0.9's StanfordOnlineProducts).
            size=3083860082,
            sha256="b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
            md5="7f73d41a2f44250d4779881525aea32e",
            checksum_source="size+SHA-256: tensorflow-datasets; MD5: widely published",
        ),
    ),
)


@register("sop")
def sop(root: Path | None, *, download: bool = False, resized: int | str | None = "auto",
        progress: bool = True) -> SampleTable:
    """Stanford Online Products with the official split and super-class labels.

    ``root`` is the ``Stanford_Online_Products`` folder or its parent; ``download=True``
    fetches and extracts the official zip into ``root`` first.
    """
    if download:
        fetch(INFO, root, progress=progress)
    folder = INFO.locate(root)
    items, labels, super_labels, split = [], [], [], []
    for name, filename in FILES.items():
        path = folder / filename
        lines = index_lines(path)
        if not lines:
            raise ValueError(f"{path} is empty; expected the header `{' '.join(HEADER)}`")
        check_header(path, *lines[0], HEADER)
        for number, line in lines[1:]:
            _, class_id, super_id, image = split_fields(path, number, line, 4, " ".join(HEADER))
            labels.append(to_int(path, number, class_id, "class_id"))
            super_labels.append(to_int(path, number, super_id, "super_class_id"))
            items.append(image)
            split.append(name)
    table = same_set_table(items, np.asarray(labels, dtype=np.int64), split, name="sop",
                           root=folder, super_labels=np.asarray(super_labels, dtype=np.int64))
    return use_resized(table, resized)
