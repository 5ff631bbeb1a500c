"""Class-balanced sampling: time per epoch and epoch coverage, fairdml vs pytorch-metric-learning.

Both samplers produce batches of 8 classes x 4 samples (batch 32) over the same labels:
fairdml's `ClassBalancedBatchSampler` (one epoch = every sample at least once) and PML's
`MPerClassSampler(labels, m=4, batch_size=32, length_before_new_iter=N)` (an epoch of N
indices drawn class by class with replacement). Reported: milliseconds to produce one
epoch (median of repeats), batches per epoch, and the fraction of the data set's samples
that appear in the epoch. Label sets: CUB-200 train (100 classes, 5,864 images, sizes as
evenly spread as possible) and an SOP-train-sized synthetic set (11,318 classes, sizes
2 + Poisson(3.26), about 59.5k images).

Run: ``.venv/bin/python benchmarks/bench_sampler.py`` (prints a Markdown table).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

import numpy as np

from fairdml.data.samplers import ClassBalancedBatchSampler

C, M = 8, 4
REPEATS = 5


def label_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cub_sizes = np.full(100, 5864 // 100) + (np.arange(100) < 5864 % 100)
    sop_sizes = 2 + rng.poisson(3.26, size=11318)
    return {"CUB-200 train (100 classes, 5,864 images)": np.repeat(np.arange(100), cub_sizes),
            f"SOP-sized (11,318 classes, {int(sop_sizes.sum()):,} images)":
                np.repeat(np.arange(11318), sop_sizes)}


def time_epochs(make_epoch) -> tuple[float, list]:
    times, epoch = [], None
    for repeat in range(REPEATS):
        start = time.perf_counter()
        epoch = make_epoch(repeat)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, epoch


def fairdml_epoch(labels: np.ndarray):
    sampler = ClassBalancedBatchSampler(labels, C, M, seed=0)

    def run(epoch: int) -> list[list[int]]:
        sampler.set_epoch(epoch)
        return list(sampler)

    return run


def pml_epoch(labels: np.ndarray):
    import torch
    from pytorch_metric_learning.samplers import MPerClassSampler

    sampler = MPerClassSampler(labels, m=M, batch_size=C * M, length_before_new_iter=len(labels))

    def run(epoch: int) -> list[list[int]]:
        torch.manual_seed(epoch)
        indices = list(iter(sampler))
        return [indices[i:i + C * M] for i in range(0, len(indices), C * M)]

    return run


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    import pytorch_metric_learning

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; "
          f"PML {pytorch_metric_learning.__version__}")
    print("| labels | sampler | ms / epoch | batches / epoch | samples covered |")
    print("|---|---|---:|---:|---:|")
    for name, labels in label_sets().items():
        for sampler_name, factory in (("fairdml ClassBalancedBatchSampler", fairdml_epoch),
                                      ("PML MPerClassSampler", pml_epoch)):
            ms, epoch = time_epochs(factory(labels))
            covered = len(np.unique(np.concatenate([np.asarray(b) for b in epoch])))
            print(f"| {name} | {sampler_name} | {ms:.1f} | {len(epoch):,} | "
                  f"{covered / len(labels):.1%} |")


if __name__ == "__main__":
    main()
