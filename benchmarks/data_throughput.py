"""Loading throughput: decoded + augmented images per second with the standard train transform.

Writes synthetic JPEGs of CUB-like size (500x375, smooth content so that files are of
natural-photo size rather than noise-sized) into a temporary folder, then times one pass
of a ``torch.utils.data.DataLoader`` (batch 32, shuffled) at 1, 2 and 4 workers for:

- ``fairdml``: ``TableDataset`` + ``transforms.create("standard", train=True)`` on the
  original JPEGs (the path every training run takes);
- ``fairdml resized256``: the same after ``fairdml data prepare --resize 256`` (the
  resized-image cache);
- ``torchvision ImageFolder`` (reference): ``ImageFolder`` with the same torchvision
  transforms, the loading path of PML's and powerful-benchmarker's examples.

All variants run in the same process, interleaved per repeat, so that the ratios are
meaningful on a shared, noisy machine. Run: ``python benchmarks/data_throughput.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

from fairdml.data.dataset import TableDataset
from fairdml.data.resized import use_resized, write_resized
from fairdml.data.table import same_set_table
from fairdml.data.transforms import RATIO_RANGE, SCALE_RANGE, create

IMAGE_SIZE = (500, 375)
CLASSES = 16


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` smooth synthetic 500x375 JPEGs in ImageFolder layout; their relative paths."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(IMAGE_SIZE, Image.Resampling.BICUBIC)
        noise = rng.normal(0, 6, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        relative = f"class_{index % CLASSES:02d}/{index:05d}.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / relative, format="JPEG", quality=90)
        items.append(relative)
    return items


def images_per_second(dataset: torch.utils.data.Dataset, workers: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True,
                                         num_workers=workers, persistent_workers=False)
    start = time.perf_counter()
    seen = 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="fairdml-throughput-") as tmp:
        folder = Path(tmp)
        items = write_jpegs(folder, args.images)
        sizes = [(folder / item).stat().st_size for item in items]
        labels = [int(item.split("/")[0].split("_")[1]) for item in items]
        table = same_set_table(items, labels, ["train"] * len(items), name="synthetic",
                               root=folder)
        transform = create("standard", train=True)
        reference = T.Compose([T.Resize(256), T.RandomResizedCrop(227, scale=SCALE_RANGE,
                                                                  ratio=RATIO_RANGE),
                               T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        # scanned before the cache folder exists, so that it sees the originals only
        image_folder = datasets.ImageFolder(str(folder), transform=reference)
        write_resized(table, 256, workers=2, progress=False)
        variants = {
            "fairdml TableDataset": TableDataset(table, transform),
            "fairdml TableDataset, resized256 cache": TableDataset(
                use_resized(table, 256), transform),
            "torchvision ImageFolder (reference)": image_folder,
        }
        assert len(variants["torchvision ImageFolder (reference)"]) == len(items)
        results: dict[tuple[str, int], list[float]] = {}
        for workers in args.workers:
            for _ in range(args.repeats):
                for name, dataset in variants.items():
                    results.setdefault((name, workers), []).append(
                        images_per_second(dataset, workers))

    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch thread(s) per worker, "
          f"python {sys.version.split()[0]}, torch {torch.__version__}")
    print(f"{args.images} synthetic JPEGs of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, mean file size "
          f"{statistics.mean(sizes) / 1024:.0f} KiB; batch 32; median of {args.repeats} passes")
    print()
    names = list(variants)
    print("| workers | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for workers in args.workers:
        cells = [f"{statistics.median(results[(name, workers)]):.0f} img/s" for name in names]
        print(f"| {workers} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
