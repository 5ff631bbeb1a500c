"""A cache of images resized to the protocol's shorter side (``fairdml data prepare --resize``).

The standard transforms first resize the shorter image side to 256 and then crop, so
decoding full-size JPEGs every epoch (CUB averages about 500x375, SOP and Cars are larger)
wastes most of the loading time. ``write_resized`` stores every image of a table once,
resized the way torchvision's ``Resize(size)`` does it (shorter side to ``size``, longer
side ``int(size * long / short)``, PIL bilinear with antialiasing), under
``<data set folder>/resized<size>/<same relative path>``; images whose shorter side is
already at most ``size`` are copied byte for byte. JPEGs are re-encoded at quality 95.
A ``COMPLETE.json`` marker written last records the size and image count; a cache without
it (an interrupted run) is never used. The standard sources switch to the cache
automatically (``resized="auto"``) when a complete one for 256 exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from fairdml.data.table import SampleTable

MARKER = "COMPLETE.json"
DEFAULT_SIZE = 256
JPEG_QUALITY = 95


def cache_folder(dataset_dir: Path, size: int) -> Path:
    """Where the cache for ``size`` lives."""
    return Path(dataset_dir) / f"resized{size}"


def use_resized(table: SampleTable, resized: int | str | None) -> SampleTable:
    """The table with items pointing into the resized cache when asked for and present.

    ``resized="auto"`` uses a complete 256 cache if there is one; an integer requires the
    cache of that size (an error says how to create it); ``None`` keeps the originals.
    """
    if resized is None:
        return table
    if resized == "auto":
        size = DEFAULT_SIZE
    elif isinstance(resized, int) and not isinstance(resized, bool) and resized > 0:
        size = resized
    else:
        raise ValueError(f"resized must be 'auto', None or a positive int, got {resized!r}")
    if table.root is None:
        raise ValueError(f"table {table.name!r} has no root folder; cannot use a resized cache")
    folder = cache_folder(table.root, size)
    count = _complete_count(folder)
    if count != len(table):
        if resized == "auto":
            return table
        state = "does not exist" if count is None else f"holds {count} of {len(table)} images"
        raise FileNotFoundError(
            f"{table.name}: the resized cache {folder} {state}; create it with "
            f"`fairdml data prepare {table.name} --root {table.root} --resize {size}`"
        )
    items = [f"{folder.name}/{item}" for item in table.items]
    return dataclasses.replace(table, items=items)


def _complete_count(folder: Path) -> int | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        return int(json.loads(marker.read_text())["images"])
    except (ValueError, KeyError, TypeError):
        return None


def write_resized(table: SampleTable, size: int = DEFAULT_SIZE, *, workers: int | None = None,
                  progress: bool = True) -> Path:
    """Write the resized cache of a file-backed table; return its folder.

    Images already present in the cache are kept (an interrupted run resumes). Runs on
    ``workers`` processes (default: all cores).
    """
    if table.in_memory or table.root is None:
        raise ValueError(f"table {table.name!r} is not a file-backed table with a root folder")
    if size <= 0:
        raise ValueError(f"resize size must be positive, got {size}")
    folder = cache_folder(table.root, size)
    (folder / MARKER).unlink(missing_ok=True)
    jobs = [(str(table.path(i)), str(folder / table.items[i]), size) for i in range(len(table))]
    from fairdml.data.check import run_parallel

    failures = [result for result in run_parallel(_resize_one, jobs, workers=workers,
                                                  progress=progress,
                                                  description=f"resize {table.name} to {size}")
                if result is not None]
    if failures:
        listed = "\n  ".join(failures[:20])
        raise OSError(f"{len(failures)} image(s) could not be resized:\n  {listed}")
    (folder / MARKER).write_text(json.dumps({"size": size, "images": len(table),
                                             "data_set": table.name}))
    return folder


def _resize_one(job: tuple[str, str, int]) -> str | None:
    """Resize one image into the cache; return an error message or None."""
    from PIL import Image

    source, target, size = job
    target_path = Path(target)
    if target_path.is_file():
        return None
    target_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = target_path.with_name(f".{target_path.name}.{os.getpid()}.tmp")
    try:
        with Image.open(source) as image:
            width, height = image.size
            short, long = min(width, height), max(width, height)
            if short <= size:
                shutil.copyfile(source, temporary)
            else:
                new_long = int(size * long / short)
                new_size = (size, new_long) if width <= height else (new_long, size)
                image_format = image.format
                if image.mode not in ("RGB", "L", "CMYK"):
                    image = image.convert("RGB")
                resized = image.resize(new_size, Image.Resampling.BILINEAR)
                options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
                resized.save(temporary, format=image_format or "JPEG", **options)
        os.replace(temporary, target_path)
    except Exception as error:  # reported per file, the run goes on
        temporary.unlink(missing_ok=True)
        return f"{source}: {type(error).__name__}: {error}"
    return None
