"""``omniglot``: handwritten characters of 50 alphabets (Lake et al., Science 2015).

The official distribution (github.com/brendenlake/omniglot, ``python/``) has two zips,
``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip``
(20 alphabets, 659 characters), each holding one folder ``<alphabet>/<character>/*.png``
of 105x105 binary drawings, 20 per character. The project shares
``images_background_small2.zip`` (5 alphabets, 156 characters, 3,120 images) in the same
layout.

``root`` may be

* a ``.zip`` in that layout (a top folder inside is allowed),
* a folder holding such zips and/or extracted trees (all are combined), or
* an extracted tree itself (``root/<alphabet>/<character>/*.png``).

Zips are never read in place: each is extracted once, safely, into
``<cache>/omniglot/<zip name>-<sha256 prefix>/`` where ``<cache>`` is the ``cache_dir``
option, else ``$FAIRDML_CACHE``, else ``~/.cache/fairdml`` (so a read-only data folder
works). The table lists absolute paths of the PNG files.

Labels are strings ``"<alphabet>/<character>"``, one class per character; every item is
query and gallery. ``split="half"`` (default): classes sorted by (alphabet, character), the
first ``ceil(K / 2)`` train and the rest test; with both official zips this mixes
background and evaluation alphabets by name order. ``split="official"``: Lake's split,
the characters of ``images_background*`` train and those of ``images_evaluation*`` test
(the tree or zip names tell which is which). ``download=True`` fetches the official zips
into ``root`` (or ``<cache>/omniglot``) when they are missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fairdml.data import register
from fairdml.data.table import SampleTable, same_set_table

OFFICIAL_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
OFFICIAL_ARCHIVES = ("images_background.zip", "images_evaluation.zip")
IMAGE_SUFFIX = ".png"
HASH_PREFIX = 16
SPLITS = ("half", "official")
OFFICIAL_PARTS = {"images_background": "train", "images_evaluation": "test"}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where extracted archives live: ``cache_dir``, ``$FAIRDML_CACHE`` or ``~/.cache/fairdml``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FAIRDML_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fairdml"


@register("omniglot")
def omniglot(root: Path | None = None, *, download: bool = False,
             cache_dir: str | Path | None = None,
             base_url: str = OFFICIAL_BASE_URL, split: str = "half") -> SampleTable:
    """The Omniglot table from ``root`` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"omniglot split must be one of {SPLITS}, got {split!r}")
    cache = cache_root(cache_dir) / "omniglot"
    if root is None:
        if not download:
            raise ValueError("omniglot needs root: a zip such as images_background.zip, a "
                             "folder holding the zips, or the extracted "
                             "<alphabet>/<character>/*.png tree (or pass download=True)")
        root = cache
    root = Path(root).expanduser()
    if download:
        fetch_official(root, base_url=base_url)
    if not root.exists():
        raise FileNotFoundError(f"omniglot root {root} does not exist")
    trees = find_trees(root, cache)
    return table_from_trees(trees, split=split)


def fetch_official(folder: Path, *, base_url: str = OFFICIAL_BASE_URL) -> list[Path]:
    """Download the official zips that ``folder`` lacks (as zip or extracted folder)."""
    if folder.suffix.lower() == ".zip":
        raise ValueError(f"download=True needs a folder as omniglot root, got the file {folder}")
    try:
        from fairdml.data.download import download_file
    except ImportError as error:  # pragma: no cover - the module ships with fairdml
        raise RuntimeError(f"download=True needs fairdml.data.download ({error}); put "
                           f"{' and '.join(OFFICIAL_ARCHIVES)} into {folder} instead") from error
    fetched = []
    for name in OFFICIAL_ARCHIVES:
        if (folder / name).is_file() or _is_tree(folder / Path(name).stem):
            continue
        fetched.append(download_file(f"{base_url.rstrip('/')}/{name}", folder / name))
    return fetched


def find_trees(root: Path, cache: Path) -> list[Path]:
    """The ``<alphabet>/<character>/*.png`` folders that ``root`` designates."""
    if root.is_file():
        if root.suffix.lower() != ".zip":
            raise ValueError(f"omniglot root {root} is a file but not a .zip archive")
        return _trees_in(extract_cached(root, cache), source=root)
    if _is_tree(root):
        return [root]
    trees = [sub for sub in _subfolders(root) if _is_tree(sub)]
    extracted_names = {tree.name for tree in trees}
    for archive in sorted(root.glob("*.zip")):
        if archive.stem not in extracted_names:
            trees += _trees_in(extract_cached(archive, cache), source=archive)
    if not trees:
        raise FileNotFoundError(
            f"no Omniglot images under {root}: expected <alphabet>/<character>/*.png there, "
            "in a sub-folder, or .zip archives in that layout")
    return trees


def extract_cached(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` once into ``cache``; return the folder holding its contents.

    The folder name carries a SHA-256 prefix of the archive, so a changed archive is
    extracted anew. Extraction goes to a temporary folder that is renamed into place only
    when complete, so an interrupted or concurrent run never sees a partial tree.
    """
    from fairdml.data.download import safe_extract

    digest = _sha256(archive)[:HASH_PREFIX]
    target = cache / f"{archive.stem}-{digest}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.stem}-", dir=cache))
    try:
        safe_extract(archive, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def table_from_trees(trees: list[Path], *, split: str = "half") -> SampleTable:
    """One row per PNG, split by class as ``split`` says (see the module docstring)."""
    owner: dict[tuple[str, str], Path] = {}
    paths: list[str] = []
    keys: list[tuple[str, str]] = []
    for tree in trees:
        for alphabet in _subfolders(tree):
            for character in _subfolders(alphabet):
                key = (alphabet.name, character.name)
                if key in owner:
                    raise ValueError(f"omniglot character {key[0]}/{key[1]} appears in both "
                                     f"{owner[key]} and {tree}")
                files = sorted(p for p in character.iterdir()
                               if p.suffix.lower() == IMAGE_SUFFIX and p.is_file())
                if not files:
                    continue
                owner[key] = tree
                paths += [str(p) for p in files]
                keys += [key] * len(files)
    classes = sorted(owner)
    if len(classes) < 2:
        raise ValueError(f"omniglot needs at least 2 characters, found {len(classes)} in "
                         f"{', '.join(map(str, trees))}")
    if split == "official":
        part = {tree: _official_part(tree) for tree in trees}
        train_classes = {key for key in classes if part[owner[key]] == "train"}
    else:
        train_classes = set(classes[:(len(classes) + 1) // 2])
    labels = np.array([f"{a}/{c}" for a, c in keys], dtype=object)
    item_split = np.array(["train" if key in train_classes else "test" for key in keys])
    return same_set_table(paths, labels, item_split, name="omniglot")


def _official_part(tree: Path) -> str:
    for prefix, part in OFFICIAL_PARTS.items():
        if tree.name.startswith(prefix):
            return part
    raise ValueError(f"split='official' needs trees named images_background* or "
                     f"images_evaluation*, got {tree}")


def _trees_in(folder: Path, *, source: Path) -> list[Path]:
    if _is_tree(folder):
        return [folder]
    trees = [sub for sub in _subfolders(folder) if _is_tree(sub)]
    if not trees:
        raise ValueError(f"{source} holds no <alphabet>/<character>/*.png tree (looked in "
                         f"its extracted copy {folder})")
    return trees


def _is_tree(folder: Path) -> bool:
    return folder.is_dir() and next(folder.glob(f"*/*/*{IMAGE_SUFFIX}"), None) is not None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
