"""Cars196 (Krause et al., "3D Object Representations for Fine-Grained Categorization",
3dRR 2013) with the DML split.

16,185 images of 196 car models. The metric-learning split is class-disjoint: classes 1-98
train (8,054 images), 99-196 test (8,131), every test image both query and gallery. The
split is read from ``cars_annos.mat`` (variable ``annotations``, fields
``relative_im_path``, ``bbox_*``, ``class``, ``test``); its ``test`` field is the
classification split and is ignored. Images are ``car_ims/NNNNNN.jpg`` next to the file.
Labels keep the official class ids 1-196.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairdml.data import register
from fairdml.data.official import OfficialDataset, RemoteFile, fetch
from fairdml.data.resized import use_resized
from fairdml.data.table import SampleTable, same_set_table

LAST_TRAIN_CLASS = 98
ANNOTATIONS = "cars_annos.mat"
REQUIRED_FIELDS = ("relative_im_path", "class")

_STANFORD = ("http://ai.stanford.edu/~jkrause/car196/",
             "http://imagenet.stanford.edu/internal/car196/")
# a public Hugging Face copy of the original files, pinned to one commit
_HF_MIRROR = ("https://huggingface.co/datasets/XiN0919/FGVC/resolve/"
              "921e8dce38536cd5982739d85d5e9235d2cb2a76/")

INFO = OfficialDataset(
    name="cars196",
    description="Cars196: 196 car models, 16,185 images (train 1-98 / test 99-196)",
    folder="",
    index_files=(ANNOTATIONS,),
    expected={"train": {"images": 8054, "classes": 98},
              "test": {"images": 8131, "classes": 98}},
    remote_files=(
        RemoteFile(
            filename="car_ims.tgz",
            urls=tuple(base + "car_ims.tgz" for base in (*_STANFORD, _HF_MIRROR)),
            provides="car_ims",
            extract=True,
            # MD5 of the official tarball: published by many loaders (e.g. PML 0.9's
            # Cars196, the Cars196Metric datasets). Size: a public download script that
            # fetched the Hugging Face copy; it also records SHA-256
            # 4d96e3e3e892c6b7e4a71959325c7de4804037d27ba5aaf1c756100fd94a5342 for that
            # copy, which is not enforced because it was never published for the original.
            size=1956628579,
            md5="d5c8f0aa497503f355e17dc7886c3f14",
            checksum_source="MD5: widely published; size: third-party script; no SHA-256",
        ),
        RemoteFile(
            filename=ANNOTATIONS,
            urls=tuple(base + ANNOTATIONS for base in (*_STANFORD, _HF_MIRROR)),
            provides=ANNOTATIONS,
            extract=False,
            md5="b407c6086d669747186bd1d764ff9dbc",  # same loaders as above
            checksum_source="MD5: widely published; no SHA-256 or size known",
        ),
    ),
)


@register("cars196")
def cars196(root: Path | None, *, download: bool = False, resized: int | str | None = "auto",
            progress: bool = True) -> SampleTable:
    """Cars196 with the class-disjoint split (train classes 1-98, test 99-196).

    ``root`` holds ``cars_annos.mat`` and ``car_ims/``; ``download=True`` fetches both
    first. The ``test`` field of the annotations (classification split) is ignored.
    """
    if download:
        fetch(INFO, root, progress=progress)
    folder = INFO.locate(root)
    paths, labels = read_annotations(folder / ANNOTATIONS)
    split = np.where(labels <= LAST_TRAIN_CLASS, "train", "test")
    table = same_set_table(paths, labels, split, name="cars196", root=folder)
    return use_resized(table, resized)


def read_annotations(path: Path) -> tuple[list[str], np.ndarray]:
    """Image paths and class ids from ``cars_annos.mat`` (errors name the field and record)."""
    import scipy.io

    try:
        content = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except Exception as error:  # scipy raises several types for non-MAT input
        raise ValueError(f"{path} is not a readable MATLAB file: {error}") from error
    if "annotations" not in content:
        variables = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{path}: no variable 'annotations' (found {variables})")
    annotations = np.atleast_1d(content["annotations"])
    fields = annotations.dtype.names or ()
    missing = [field for field in REQUIRED_FIELDS if field not in fields]
    if missing:
        raise ValueError(f"{path}: 'annotations' lacks the fields {missing} (has {list(fields)})")
    paths, labels = [], []
    for index, record in enumerate(annotations, start=1):
        image, label = record["relative_im_path"], record["class"]
        if not isinstance(image, str) or not image:
            raise ValueError(
                f"{path}: annotations({index}).relative_im_path is {image!r}, expected a path "
                "like 'car_ims/000001.jpg'"
            )
        try:
            value = int(label)
        except (TypeError, ValueError):
            value = None
        if value is None or value != label or not 1 <= value <= 196:
            raise ValueError(
                f"{path}: annotations({index}).class is {label!r}, expected an integer 1-196"
            )
        paths.append(image)
        labels.append(value)
    return paths, np.asarray(labels, dtype=np.int64)
