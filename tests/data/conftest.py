"""Fixtures for the data tests: tiny PNG trees written with PIL, and the shared Omniglot zip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# the project's shared data folder sits next to the checkout (configs/omniglot.yaml uses it too)
SHARED_OMNIGLOT_ZIP = Path(os.environ.get(
    "FAIRDML_OMNIGLOT_ZIP",
    Path(__file__).resolve().parents[3] / "shared/data/omniglot/images_background_small2.zip"))


def write_png(path: Path, value: int = 128, size: tuple[int, int] = (12, 10),
              mode: str = "L") -> Path:
    """Write a small PNG whose pixels vary with ``value`` (so images differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    pixels = (np.arange(height * width).reshape(height, width) * 7 + value) % 256
    if mode == "RGB":
        pixels = np.stack([pixels, 255 - pixels, pixels // 2], axis=-1)
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)
    return path


def write_class_tree(root: Path, images_per_class: dict[str, int]) -> Path:
    """``root/<class>/<i>.png`` for each class and count."""
    for k, (name, count) in enumerate(images_per_class.items()):
        for i in range(count):
            write_png(root / name / f"{i:03d}.png", value=10 * k + i)
    return root


@pytest.fixture
def basic_write_png():
    """The `write_png` helper, for tests that build their own files."""
    return write_png


@pytest.fixture
def basic_class_tree(tmp_path: Path) -> Path:
    """Four classes a-d with 3, 4, 2 and 5 images."""
    return write_class_tree(tmp_path / "tree", {"a": 3, "b": 4, "c": 2, "d": 5})


@pytest.fixture
def basic_omniglot_tree(tmp_path: Path) -> Path:
    """A miniature Omniglot tree: 2 alphabets x 3 characters x 4 drawings (105x105)."""
    root = tmp_path / "omniglot_mini"
    for a, alphabet in enumerate(("Alpha", "Beta")):
        for c in range(1, 4):
            for d in range(1, 5):
                write_png(root / alphabet / f"character{c:02d}" / f"{a}{c}_{d:02d}.png",
                          value=a * 50 + c * 10 + d, size=(105, 105))
    return root


@pytest.fixture(scope="session")
def shared_omniglot_zip() -> Path:
    """The project's shared Omniglot subset (5 alphabets, 156 characters, 3,120 PNGs)."""
    if not SHARED_OMNIGLOT_ZIP.is_file():
        pytest.skip(f"shared Omniglot zip {SHARED_OMNIGLOT_ZIP} is not on this machine")
    return SHARED_OMNIGLOT_ZIP


@pytest.fixture(scope="session")
def shared_omniglot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One extraction cache for the whole session (extracting 3,120 files takes a moment)."""
    return tmp_path_factory.mktemp("omniglot_cache")
