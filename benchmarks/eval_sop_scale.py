"""SOP-scale evaluation benchmark: fairdml.evaluate vs pytorch-metric-learning.

Data: SOP-shaped synthetic embeddings, 60,502 items x 512 dims in 11,316 classes of 2 to
12 items, each class a random direction plus Gaussian noise (noise chosen so that
recall@1 is about 0.7), L2-normalised. Same-set mode. Measured, each in a fresh
subprocess so that the peak resident memory (ru_maxrss) minus the resident memory
before the call is the peak extra memory of that call:

  (a) recall@{1,10,100,1000} + r_precision + map@r in one fairdml call;
  (b) nmi (one k-means seed);
  (gemm_bound) the block products alone, the floor of same-set search;
  and in the same run pytorch-metric-learning's AccuracyCalculator (k=1000) for
  precision_at_1 / r_precision / mean_average_precision_at_r, and its NMI (faiss k-means,
  needs faiss importable; pass --faiss-path DIR for a private install).

Run: ``.venv/bin/python benchmarks/eval_sop_scale.py [--n 60502] [--skip-pml]``.
Prints one JSON line per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

N_ITEMS, N_CLASSES, DIM = 60_502, 11_316, 512


def class_sizes(n_items: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sizes in 2..12 summing exactly to ``n_items`` (SOP test split: 60,502 / 11,316)."""
    if not 2 * n_classes <= n_items <= 12 * n_classes:
        raise ValueError(f"cannot split {n_items} items into {n_classes} classes of 2..12")
    sizes = np.full(n_classes, 2)
    extra = n_items - sizes.sum()
    while extra > 0:
        pick = rng.integers(0, n_classes, size=extra)
        for c in pick:
            if extra == 0:
                break
            if sizes[c] < 12:
                sizes[c] += 1
                extra -= 1
    return sizes


def make_data(
    n_items: int, n_classes: int, dim: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n_items, n_classes, rng)
    labels = np.repeat(np.arange(n_classes), sizes)
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + noise * rng.standard_normal((n_items, dim)).astype(np.float32) / np.sqrt(
        dim, dtype=np.float32
    )
    # L2-normalised, as DML embeddings usually are: then pytorch-metric-learning's default
    # L2 search ranks exactly like fairdml's cosine.
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(n_items)
    return np.ascontiguousarray(x[order]), labels[order]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(task: str, args: argparse.Namespace) -> dict:
    """Run one measurement in this process (called in a fresh subprocess)."""
    import torch

    x, y = make_data(args.n, args.classes, DIM, args.noise)
    import fairdml  # noqa: F401  (import cost outside the measurement)

    if task.startswith("pml"):
        if args.faiss_path:
            sys.path.insert(0, args.faiss_path)
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    base = _rss_bytes()
    cpu_start = time.process_time()
    start = time.perf_counter()
    if task == "fairdml_retrieval":
        out = fairdml.evaluate(
            xt, yt, metrics=["recall", "r_precision", "map@r"], recall_ks=(1, 10, 100, 1000),
            progress=False,
        )
    elif task == "fairdml_nmi":
        out = fairdml.evaluate(xt, yt, metrics=["nmi"], kmeans_seeds=(0,), progress=False)
    elif task == "pml_retrieval":
        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k=1000,
            device=torch.device("cpu"),
        )
        out = calc.get_accuracy(xt, yt)
    elif task == "pml_nmi":
        calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"))
        out = calc.get_accuracy(xt, yt)
    elif task == "gemm_bound":
        # The multiply-adds alone: every block pair (i <= j) of the normalised embeddings
        # multiplied once into a reused buffer, nothing else (the floor for same-set search).
        xn = torch.nn.functional.normalize(xt, dim=1)
        block = 8192
        buffer = torch.empty(block * block)
        pairs = 0
        for i in range(0, len(xn), block):
            for j in range(i, len(xn), block):
                a, b = xn[i : i + block], xn[j : j + block]
                torch.mm(a, b.T, out=buffer[: len(a) * len(b)].view(len(a), len(b)))
                pairs += len(a) * len(b)
        out = {"multiply_adds": float(pairs * xn.shape[1])}
    else:
        raise ValueError(f"unknown task {task!r}")
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "task": task,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "peak_extra_mib": round((peak - base) / 2**20, 1),
        "metrics": {k: float(v) for k, v in out.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N_ITEMS)
    parser.add_argument("--classes", type=int, default=N_CLASSES)
    parser.add_argument("--noise", type=float, default=2.28)
    parser.add_argument("--skip-pml", action="store_true")
    parser.add_argument("--faiss-path", default=os.environ.get("FAIRDML_FAISS_PATH", ""))
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)), flush=True)
        return 0
    tasks = args.tasks or ["fairdml_retrieval", "fairdml_nmi", "gemm_bound"]
    if not args.skip_pml and not args.tasks:
        tasks += ["pml_retrieval", "pml_nmi"]
    results = []
    for task in tasks:
        cmd = [sys.executable, __file__, "--child", task, "--n", str(args.n),
               "--classes", str(args.classes), "--noise", str(args.noise),
               "--faiss-path", args.faiss_path]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{task} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        line = proc.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    for r in results:
        print(
            f"{r['task']:20s} load {r['load_average_1min_after']:5.2f} "
            f"{r['seconds']:8.1f} s wall {r['cpu_seconds']:8.1f} s cpu "
            f"{r['peak_extra_mib']:8.0f} MiB  {r['metrics']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
