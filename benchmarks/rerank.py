"""Re-ranking benchmark: time and peak memory of k-reciprocal re-ranking and average query
expansion at SOP scale, next to the plain exact search they start from.

Data: the SOP-shaped synthetic embeddings of ``benchmarks/eval_sop_scale.py`` (512-d,
L2-normalised, classes of 2 to 12 items, noise 2.28 so that plain recall@1 is about 0.7),
at 10,000 items (1,870 classes) and 60,502 items (11,316 classes), same-set mode. Tasks,
each in a fresh subprocess so that peak resident memory (ru_maxrss) minus the resident
memory just before the call is the peak extra memory of that call:

- ``search``: the exact top-40 lists (``exact_knn``), the reference every re-ranker pays;
- ``k_reciprocal``: ``k_reciprocal_rerank`` with the paper's k1 = 20, k2 = 6,
  lambda = 0.3 and 40 candidates (its own top-40 search included);
- ``query_expansion``: AQE with 2 neighbours (``query_expansion``) and the exact
  top-40 search of the expanded queries (``search_excluding_self``).

Each task also reports recall@1 and MAP@R of its lists (max R = 11 < 40). A dense N x N
float32 distance matrix, the usual implementation, would need N * N * 4 bytes (printed as
``dense_mib``).

Run: ``.venv/bin/python benchmarks/rerank.py [--sizes 10000 60502] [--tasks ...]``.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_sop_scale import DIM, N_CLASSES, N_ITEMS, make_data  # noqa: E402

TASKS = ("search", "k_reciprocal", "query_expansion")
DEPTH = 40


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _map_at_r(found, labels) -> float:
    """MAP@R from lists at least max R deep (same-set: R = class size - 1)."""
    import torch

    r = (torch.bincount(labels)[labels] - 1).double()
    rel = (labels[found] == labels[:, None]).double()
    positions = torch.arange(1, found.shape[1] + 1, dtype=torch.float64)
    within = positions[None, :] <= r[:, None]
    hits = rel * within
    precision = torch.cumsum(hits, dim=1) / positions[None, :]
    return float(((precision * hits).sum(dim=1) / r).mean())


def measure(task: str, n: int, noise: float, threads: int) -> dict:
    """One measurement in this process (called in a fresh subprocess)."""
    import torch

    torch.set_num_threads(threads)
    from fairdml.eval.neighbors import exact_knn
    from fairdml.eval.rerank import k_reciprocal_rerank, query_expansion, search_excluding_self

    classes = round(n * N_CLASSES / N_ITEMS)
    x_np, y_np = make_data(n, classes, DIM, noise)
    x, labels = torch.from_numpy(x_np), torch.from_numpy(y_np)
    before = _rss_bytes()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if task == "search":
        _, found = exact_knn(x, DEPTH)
    elif task == "k_reciprocal":
        _, found = k_reciprocal_rerank(x, k1=20, k2=6, lambda_value=0.3, candidates=DEPTH)
    elif task == "query_expansion":
        expanded = query_expansion(x, num_neighbors=2)
        found = search_excluding_self(x, expanded, DEPTH, distance="cosine",
                                      memory_budget=1 << 30)
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    recall_at_1 = float((labels[found[:, 0]] == labels).double().mean())
    map_at_r = _map_at_r(found, labels)
    return {
        "task": task, "n": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "peak_extra_mib": round(max(peak - before, 0) / 2**20, 1),
        "dense_mib": round(n * n * 4 / 2**20), "recall@1": round(recall_at_1, 5),
        "map@r": round(map_at_r, 5),
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, N_ITEMS])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--noise", type=float, default=2.28)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.noise, args.threads)))
        return 0
    for n in args.sizes:
        for task in args.tasks:
            command = [sys.executable, __file__, "--noise", str(args.noise),
                       "--threads", str(args.threads), "--child", task, str(n)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(json.dumps({"task": task, "n": n, "error": done.stderr[-2000:]}))
                continue
            print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
