"""Builders of miniature data set trees in the exact official file formats (test helpers).

Every builder writes all classes of the real data set (CUB 200, Cars 196) or a handful
(SOP, In-Shop) with one or two tiny JPEGs each, plus the official index files, and returns
the counts it wrote so tests can compare the loaders' split sizes with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def tiny_jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def images_per_class(class_id: int) -> int:
    """Two images for even class ids, one for odd ones."""
    return 2 if class_id % 2 == 0 else 1


def build_cub(root: Path) -> dict[str, int]:
    """A ``CUB_200_2011`` folder under ``root``; train_test_split.txt deliberately disagrees."""
    folder = root / "CUB_200_2011"
    (folder / "images").mkdir(parents=True)
    images, labels, classes, split = [], [], [], []
    image_id = 0
    for class_id in range(1, 201):
        class_dir = f"{class_id:03d}.Bird_{class_id}"
        classes.append(f"{class_id} {class_dir}")
        for k in range(images_per_class(class_id)):
            image_id += 1
            relative = f"{class_dir}/Bird_{class_id}_{k:04d}_{image_id}.jpg"
            tiny_jpeg(folder / "images" / relative, seed=image_id)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {image_id % 2}")  # classification split: never used
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("classes.txt", classes), ("train_test_split.txt", split)):
        (folder / name).write_text("\n".join(lines) + "\n")
    train = sum(images_per_class(c) for c in range(1, 101))
    return {"train": train, "test": image_id - train}


def build_cars(root: Path) -> dict[str, int]:
    """``cars_annos.mat`` (official struct layout) and ``car_ims/`` under ``root``."""
    import scipy.io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    records = []
    for class_id in range(1, 197):
        for _ in range(images_per_class(class_id)):
            n = len(records) + 1
            relative = f"car_ims/{n:06d}.jpg"
            tiny_jpeg(root / relative, seed=n)
            records.append((relative, 1, 2, 11, 8, class_id, n % 2))
    annotations = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for index, record in enumerate(records):
        for field, value in zip(fields, record):
            annotations[0, index][field] = (np.array([[value]], dtype=np.uint8)
                                            if field != "relative_im_path" and value < 256
                                            else value)
    class_names = np.empty((1, 196), dtype=object)
    for class_id in range(196):
        class_names[0, class_id] = f"Make Model {class_id + 1}"
    scipy.io.savemat(root / "cars_annos.mat",
                     {"annotations": annotations, "class_names": class_names})
    train = sum(images_per_class(c) for c in range(1, 99))
    return {"train": train, "test": len(records) - train}


SOP_SUPER = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug",
             "sofa", "stapler", "table", "toaster")


def build_sop(root: Path, train_classes: int = 24, test_classes: int = 24) -> dict[str, int]:
    """``Stanford_Online_Products`` with Ebay_train.txt / Ebay_test.txt under ``root``."""
    folder = root / "Stanford_Online_Products"
    image_id = 0
    counts = {}
    for name, first, count in (("train", 1, train_classes),
                               ("test", train_classes + 1, test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for class_id in range(first, first + count):
            super_id = (class_id - 1) % 12 + 1
            for k in range(images_per_class(class_id)):
                image_id += 1
                relative = f"{SOP_SUPER[super_id - 1]}_final/{100000 + class_id}_{k}.JPG"
                tiny_jpeg(folder / relative, seed=image_id)
                lines.append(f"{image_id} {class_id} {super_id} {relative}")
        (folder / f"Ebay_{name}.txt").write_text("\n".join(lines) + "\n")
        counts[name] = len(lines) - 1
    return counts


def build_inshop(root: Path, train_items: int = 10, test_items: int = 8) -> dict[str, int]:
    """``list_eval_partition.txt`` and ``img/`` under ``root``.

    Each test item gets one query and one or two gallery images.
    """
    rows = []
    counts = {"train": 0, "query": 0, "gallery": 0}
    for item in range(1, train_items + test_items + 1):
        item_id = f"id_{item:08d}"
        states = (["train"] * images_per_class(item) if item <= train_items
                  else ["query"] + ["gallery"] * images_per_class(item))
        for k, state in enumerate(states):
            relative = f"img/WOMEN/Dresses/{item_id}/{k + 1:02d}_{k + 1}_front.jpg"
            tiny_jpeg(root / relative, seed=len(rows) + 1)
            rows.append(f"{relative} {item_id} {state}")
            counts[state] += 1
    lines = [str(len(rows)), "image_name item_id evaluation_status", *rows]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return counts


def corrupt_image(path: Path) -> None:
    """Replace an image by a truncated JPEG that fails to decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
