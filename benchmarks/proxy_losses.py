"""Proxy and classification losses beside pytorch-metric-learning: a load-robust timing.

``benchmarks/losses.py`` times every loss with the median of a few runs. On a shared,
overloaded 2-core machine a median of 7 is dominated by other processes (single runs vary
by 50x), so this script times the proxy family (same inputs, same hyper-parameters, same
PML counterparts: it imports them from ``benchmarks/losses.py``) with many interleaved
runs and reports both the minimum (the machine's undisturbed cost) and the median, for a
chosen number of torch threads. The table goes into the ``## Proxy and classification
losses`` section of ``--out``.

    .venv/bin/python benchmarks/proxy_losses.py --threads 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from markdown_sections import replace_section

SECTION = "## Proxy and classification losses"
LOSSES = ("proxy_anchor", "proxy_nca", "proxy_nca_pp", "soft_triple", "normalized_softmax",
          "cosface", "arcface", "subcenter_arcface")


def _shared_benchmark():
    """``benchmarks/losses.py`` as a module (it is a script, not a package)."""
    path = Path(__file__).with_name("losses.py")
    spec = importlib.util.spec_from_file_location("fairdml_benchmark_losses", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(shared, name: str, batch_size: int, dim: int, repeats: int,
            warmup: int) -> dict[str, float]:
    """Interleaved fairdml / PML steps; min and median ms of each."""
    counterpart = shared.COUNTERPARTS[name]
    classes = batch_size // shared.SAMPLES_PER_CLASS
    embeddings, labels = shared.make_batch(batch_size, dim)
    ours = _stepper(shared.build_fairdml(name, counterpart, classes, dim), embeddings, labels)
    theirs = _stepper(counterpart.pml(classes, dim), embeddings, labels)
    for _ in range(warmup):
        ours(), theirs()
    ours_runs, theirs_runs = [], []
    for _ in range(repeats):
        ours_runs.append(ours())
        theirs_runs.append(theirs())
    result = {}
    for who, runs in (("ours", ours_runs), ("pml", theirs_runs)):
        wall = [w for w, _ in runs]
        result[f"{who}_min"] = min(wall)
        result[f"{who}_median"] = statistics.median(wall)
        result[f"{who}_cpu"] = statistics.median(c for _, c in runs)
    return result


def _stepper(loss, embeddings: torch.Tensor, labels: torch.Tensor):
    """``loss(embeddings, labels).backward()`` returning (wall ms, this thread's CPU ms).

    With one torch thread all the work runs on the calling thread, so its CPU time is
    the cost of the step without the time the scheduler gave to other processes.
    """
    leaf = embeddings.clone().requires_grad_(True)
    parameters = list(loss.parameters())

    def step() -> tuple[float, float]:
        leaf.grad = None
        for parameter in parameters:
            parameter.grad = None
        wall, cpu = time.perf_counter(), time.thread_time()
        loss(leaf, labels).backward()
        return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000

    return step


def _fmt(ms: float) -> str:
    return f"{ms:,.1f}" if ms >= 10 else f"{ms:.2f}"


def markdown(results: dict[tuple[int, str, int], dict[str, float]], threads: list[int],
             batch_sizes: list[int], dim: int, repeats: int, machine: str,
             load: str) -> str:
    lines = [
        SECTION,
        "",
        "Forward + backward ms per step of the proxy-based and classification losses "
        f"(`benchmarks/proxy_losses.py`): random embeddings of dimension {dim}, 4 samples "
        "per class (so 64 classes at batch 256, 256 at batch 1024), the PML counterparts "
        "and hyper-parameters of `benchmarks/losses.py`, fairdml and PML runs alternating, "
        f"{repeats} timed runs each. 'min' is the fastest wall-clock run, 'median' the "
        "typical one, 'CPU' (one thread only) the median CPU time of the calling thread, "
        "which does all the work with one torch thread and is not inflated by other "
        "processes. Speed-up = PML / fairdml of the CPU medians with one thread, of the "
        "wall-clock minima with two.",
        "",
        f"Machine: {machine}. The machine was shared with other jobs (about 7 other "
        f"engineers' tests and benchmarks; load average {load} on 2 cores), so wall-clock "
        "medians are noisy; the one-thread CPU times and the two-thread minima are the "
        "fairer comparison.",
        "",
        "Every one of these losses costs at least three (B x D x rows) matrix products "
        "(the cosine matrix and its two gradients), which both libraries must do; the "
        "speed-up comes from everything else (fused cosine backward, no one-hot or "
        "concatenated matrices, SoftTriple's soft maximum over a contiguous axis). "
        "SoftTriple at batch 256 has 64 x 10 centres: about 250 M multiply-adds, ~11 ms "
        "on one core of this machine, so its 10 ms target at batch 256 is reachable only "
        "with both cores free.",
        "",
    ]
    for thread_count in threads:
        single = thread_count == 1
        lines += [f"torch threads: {thread_count}", "",
                  "| loss | batch | fairdml " + ("CPU" if single else "min") + " | PML "
                  + ("CPU" if single else "min") + " | speed-up | fairdml min / median "
                  "| PML min / median |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        speedups = []
        for name in LOSSES:
            for batch_size in batch_sizes:
                row = results[(thread_count, name, batch_size)]
                key = "cpu" if single else "min"
                speedup = row[f"pml_{key}"] / row[f"ours_{key}"]
                speedups.append(speedup)
                lines.append(
                    f"| {name} | {batch_size} | {_fmt(row[f'ours_{key}'])} | "
                    f"{_fmt(row[f'pml_{key}'])} | {speedup:.2f}x | "
                    f"{_fmt(row['ours_min'])} / {_fmt(row['ours_median'])} | "
                    f"{_fmt(row['pml_min'])} / {_fmt(row['pml_median'])} |")
        geomean = math.exp(sum(map(math.log, speedups)) / len(speedups))
        key = "cpu" if single else "min"
        slower = [f"{name} @{batch}" for (threads_, name, batch), row in results.items()
                  if threads_ == thread_count and row[f"ours_{key}"] > 1.1 * row[f"pml_{key}"]]
        over = [f"{name} ({row[f'ours_{key}']:.1f} ms)"
                for (threads_, name, batch), row in results.items()
                if threads_ == thread_count and batch == 256 and row[f"ours_{key}"] >= 10]
        lines += ["", f"Issue #5 targets on these rows with {thread_count} thread(s): "
                  f"geometric mean of the speed-ups {geomean:.2f}x (target 2x: "
                  f"{'met' if geomean >= 2 else 'MISSED'}); more than 10% slower than PML: "
                  f"{', '.join(slower) or 'none'}; not under 10 ms at batch 256: "
                  f"{', '.join(over) or 'none'}.", ""]
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    shared = _shared_benchmark()
    torch.manual_seed(0)
    results = {}
    for thread_count in args.threads:
        torch.set_num_threads(thread_count)
        for name in LOSSES:
            for batch_size in args.batch_sizes:
                row = measure(shared, name, batch_size, args.dim, args.repeats, args.warmup)
                results[(thread_count, name, batch_size)] = row
                print(f"threads={thread_count} {name:>18} B={batch_size:<5} fairdml "
                      f"min {row['ours_min']:8.2f} cpu {row['ours_cpu']:8.2f} ms | PML "
                      f"min {row['pml_min']:8.2f} cpu {row['pml_cpu']:8.2f} ms", flush=True)
    load = "/".join(f"{value:.1f}" for value in _load_average())
    machine = (f"{shared.cpu_model()} (2-core CPU), torch {torch.__version__}, "
               f"pytorch-metric-learning {sys.modules['pytorch_metric_learning'].__version__}")
    section = markdown(results, args.threads, args.batch_sizes, args.dim, args.repeats,
                       machine, load)
    print(section)
    if not args.no_write:
        replace_section(args.out, SECTION, section)
        print(f"wrote {SECTION!r} to {args.out}")
    return 0


def _load_average() -> tuple[float, float, float]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    raise SystemExit(main())
