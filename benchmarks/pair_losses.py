"""Pair / triplet losses and miners: fairdml vs pytorch-metric-learning, single thread, same run.

Complements ``benchmarks/losses.py`` (all losses, default threads, wall clock) for the
pair-and-triplet family, including miner variants that table does not list (FaceNet
semihard, batch hard, soft-plus triplet). Both libraries run on one thread
(``torch.set_num_threads(1)``) and each step -- ``loss(embeddings, labels)`` (with the
miner inside) then ``backward()`` -- is timed by the calling thread's CPU time
(``time.thread_time``) as well as wall clock: on a shared, loaded machine the CPU time of
one thread is far less disturbed by other jobs than wall time. Median of ``--repeats``.

    .venv/bin/python benchmarks/pair_losses.py                # writes docs/benchmarks.md
    .venv/bin/python benchmarks/pair_losses.py --no-write --batch-sizes 256
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from markdown_sections import replace_section
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning import miners as pml_miners

from fairdml.losses import create
from fairdml.losses import miners as fairdml_miners

SECTION = "## Pair and triplet losses, miners (single thread)"
SAMPLES_PER_CLASS = 4


def _pml_step(loss, miner=None) -> Callable:
    if miner is None:
        return loss
    return lambda x, y: loss(x, y, miner(x, y))


def cases() -> dict[str, tuple[Callable[[], Callable], Callable[[], Callable] | None]]:
    """name -> (fairdml factory, PML factory or None), equal hyper-parameters."""
    return {
        "contrastive": (lambda: create("contrastive"),
                        lambda: _pml_step(pml.ContrastiveLoss())),
        "triplet (all triplets, margin 0.2)": (
            lambda: create("triplet", margin=0.2),
            lambda: _pml_step(pml.TripletMarginLoss(margin=0.2))),
        "triplet + triplet_margin semihard": (
            lambda: create("triplet", miner=fairdml_miners.create(
                "triplet_margin", margin=0.2, type_of_triplets="semihard")),
            lambda: _pml_step(pml.TripletMarginLoss(margin=0.2), pml_miners.TripletMarginMiner(
                margin=0.2, type_of_triplets="semihard"))),
        "triplet + FaceNet semihard": (lambda: create("triplet", miner="semihard"), None),
        "triplet + batch_hard": (
            lambda: create("triplet", miner="batch_hard"),
            lambda: _pml_step(pml.TripletMarginLoss(margin=0.2), pml_miners.BatchHardMiner())),
        "triplet soft-plus (all triplets)": (
            lambda: create("triplet", soft=True, margin=0.0),
            lambda: _pml_step(pml.TripletMarginLoss(margin=0.0, smooth_loss=True))),
        "lifted_structure": (lambda: create("lifted_structure"),
                             lambda: _pml_step(pml.LiftedStructureLoss())),
        "generalized_lifted": (lambda: create("generalized_lifted"),
                               lambda: _pml_step(pml.GeneralizedLiftedStructureLoss())),
        "margin + distance_weighted": (
            lambda: create("margin"),
            lambda: _pml_step(pml.MarginLoss(learn_beta=True),
                              pml_miners.DistanceWeightedMiner())),
        "multi_similarity + miner": (
            lambda: create("multi_similarity"),
            lambda: _pml_step(pml.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner())),
        "snr_contrastive": (lambda: create("snr_contrastive"),
                            lambda: _pml_step(pml.SignalToNoiseRatioContrastiveLoss())),
        "circle (m 0.25, gamma 256)": (
            lambda: create("circle"), lambda: _pml_step(pml.CircleLoss(m=0.25, gamma=256))),
    }


def time_step(step: Callable, embeddings: torch.Tensor, labels: torch.Tensor,
              repeats: int, warmup: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of forward + backward."""
    cpu, wall = [], []
    for index in range(warmup + repeats):
        x = embeddings.clone().requires_grad_(True)
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        step(x, labels).backward()
        if index >= warmup:
            cpu.append((time.thread_time() - start_cpu) * 1e3)
            wall.append((time.perf_counter() - start_wall) * 1e3)
    return statistics.median(cpu), statistics.median(wall)


def _cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(batch_sizes: list[int], dim: int, repeats: int, warmup: int,
        pml_max_cubic_batch: int) -> list[dict]:
    rows = []
    for batch in batch_sizes:
        generator = torch.Generator().manual_seed(batch)
        embeddings = torch.randn(batch, dim, generator=generator)
        labels = torch.arange(batch) // SAMPLES_PER_CLASS
        for name, (ours, theirs) in cases().items():
            torch.manual_seed(0)
            our_cpu, our_wall = time_step(ours(), embeddings, labels, repeats, warmup)
            their_cpu = their_wall = math.nan
            cubic = name.startswith(("lifted", "snr", "triplet soft"))
            if theirs is not None and not (cubic and batch > pml_max_cubic_batch):
                torch.manual_seed(0)
                their_cpu, their_wall = time_step(theirs(), embeddings, labels,
                                                  max(1, repeats // 2), 1)
            rows.append(dict(name=name, batch=batch, ours_cpu=our_cpu, ours_wall=our_wall,
                             pml_cpu=their_cpu, pml_wall=their_wall))
            print(f"{name:38s} B={batch:<5d} fairdml {our_cpu:9.2f} ms cpu  "
                  f"PML {their_cpu:9.2f} ms cpu", flush=True)
    return rows


def to_markdown(rows: list[dict], dim: int, repeats: int) -> str:
    lines = [SECTION, "",
             f"Forward + backward per step, embeddings B x {dim}, {SAMPLES_PER_CLASS} samples "
             f"per class, one torch thread for both libraries, CPU time of the timing thread "
             f"(wall clock beside it), median of {repeats} runs (PML: of {max(1, repeats // 2)}). "
             f"Machine: {_cpu_model()}, 2 cores, shared with other jobs running at the same "
             f"time (load average around 10), so wall times are inflated; CPU times are the "
             f"comparable numbers. torch {torch.__version__}. Produced by "
             f"`benchmarks/pair_losses.py`. A dash: PML has no such loss/miner or needs "
             f"B^3 memory/time at that batch (lifted structure, SNR, soft triplet at 1024).",
             "",
             "| loss (+ miner) | B | fairdml CPU ms | PML CPU ms | speed-up | "
             "fairdml wall ms | PML wall ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    speedups = []
    for row in rows:
        ratio = row["pml_cpu"] / row["ours_cpu"]
        if math.isfinite(ratio):
            speedups.append(ratio)

        def fmt(value: float) -> str:
            return "-" if math.isnan(value) else f"{value:.1f}"

        lines.append(f"| {row['name']} | {row['batch']} | {fmt(row['ours_cpu'])} | "
                     f"{fmt(row['pml_cpu'])} | {fmt(ratio) + 'x' if math.isfinite(ratio) else '-'}"
                     f" | {fmt(row['ours_wall'])} | {fmt(row['pml_wall'])} |")
    geomean = math.exp(sum(map(math.log, speedups)) / len(speedups)) if speedups else math.nan
    slowest = min(speedups) if speedups else math.nan
    over_10ms = [r["name"] for r in rows if r["batch"] == 256 and r["ours_cpu"] > 10.0]
    lines += ["",
              f"Geometric mean speed-up (CPU time) over the {len(speedups)} compared rows: "
              f"{geomean:.2f}x; smallest speed-up {slowest:.2f}x "
              f"(target: none below 1/1.1 = 0.91x, geometric mean >= 2x). Rows over 10 ms "
              f"CPU at batch 256: {', '.join(over_10ms) if over_10ms else 'none'}.", ""]
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pml-max-cubic-batch", type=int, default=256,
                        help="largest batch at which PML's B^3 losses are run")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = run(args.batch_sizes, args.dim, args.repeats, args.warmup, args.pml_max_cubic_batch)
    section = to_markdown(rows, args.dim, args.repeats)
    print(section)
    if not args.no_write:
        replace_section(args.out, SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
