"""``fairdml eval``: metrics of an embeddings ``.npz`` file or of a training run directory.

``fairdml eval --embeddings FILE.npz`` reads ``embeddings`` and ``labels`` (and optionally
``queries`` and ``query_labels``), prints a table and, with ``--out``, writes the metrics
as JSON. ``fairdml eval RUN_DIR`` hands the run directory to
``fairdml.train.final.evaluate_run`` with the same options.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fairdml.eval.evaluate import METRICS
from fairdml.eval.inputs import DISTANCES

NPZ_KEYS = ("embeddings", "labels", "queries", "query_labels")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                        help="a training run directory (instead of --embeddings)")
    parser.add_argument("--embeddings", type=Path, default=None, metavar="FILE.npz",
                        help="npz with embeddings, labels [, queries, query_labels]")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                        help="write the metrics as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--recall-ks", type=int, nargs="+", default=[1, 2, 4, 8], metavar="K")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                        help=f"subset of {', '.join(METRICS)} or recall@K (default: all)")
    parser.add_argument("--distance", choices=DISTANCES, default="cosine")
    parser.add_argument("--kmeans-seeds", type=int, nargs="+", default=[0], metavar="SEED")
    parser.add_argument("--memory-budget-mib", type=int, default=1024,
                        help="extra working memory of the search in MiB (default 1024)")
    parser.add_argument("--device", default="cpu", help="torch device to compute on")
    parser.add_argument("--search", choices=("exact", "faiss-ivf", "faiss-hnsw"),
                        default="exact", help="neighbour search (faiss ones are approximate)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--rerank", choices=("k_reciprocal", "query_expansion"), default=None,
                        help="re-rank before the retrieval metrics (fairdml.eval.rerank)")
    parser.add_argument("--rerank-k1", type=int, default=None, help="k_reciprocal: k1 (20)")
    parser.add_argument("--rerank-k2", type=int, default=None, help="k_reciprocal: k2 (6)")
    parser.add_argument("--rerank-lambda", type=float, default=None,
                        help="k_reciprocal: lambda (0.3)")
    parser.add_argument("--rerank-candidates", type=int, default=None,
                        help="k_reciprocal: neighbours re-ranked per query (2 k1, or max R)")
    parser.add_argument("--rerank-neighbors", type=int, default=None,
                        help="query_expansion: neighbours averaged into each query (2)")
    parser.add_argument("--rerank-alpha", type=float, default=None,
                        help="query_expansion: alpha-QE exponent (0: plain average)")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an embeddings file; refuses missing keys and unknown keys."""
    if not path.is_file():
        raise FileNotFoundError(f"--embeddings {path}: no such file")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        missing = {"embeddings", "labels"} - keys
        if missing:
            raise KeyError(
                f"{path}: missing array(s) {sorted(missing)}; expected {list(NPZ_KEYS)} "
                f"(queries and query_labels optional), found {sorted(keys)}"
            )
        unknown = keys - set(NPZ_KEYS)
        if unknown:
            raise KeyError(f"{path}: unexpected array(s) {sorted(unknown)}; expected {NPZ_KEYS}")
        return {k: data[k] for k in keys}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "metrics": args.metrics,
        "recall_ks": tuple(args.recall_ks),
        "distance": args.distance,
        "kmeans_seeds": tuple(args.kmeans_seeds),
        "memory_budget": args.memory_budget_mib * 2**20,
        "progress": False if args.no_progress else None,
        "search": args.search,
        **_rerank_options(args),
    }


_RERANK_FLAGS = {"k1": "rerank_k1", "k2": "rerank_k2", "lambda": "rerank_lambda",
                 "candidates": "rerank_candidates", "num_neighbors": "rerank_neighbors",
                 "alpha": "rerank_alpha"}


def _rerank_options(args: argparse.Namespace) -> dict[str, Any]:
    """``rerank`` / ``rerank_params`` of evaluate() from the --rerank* flags (only when set)."""
    params = {key: getattr(args, flag) for key, flag in _RERANK_FLAGS.items()
              if getattr(args, flag, None) is not None}
    if getattr(args, "rerank", None) is None:
        if params:
            flags = sorted("--" + _RERANK_FLAGS[k].replace("_", "-") for k in params)
            raise SystemExit(f"fairdml eval: {', '.join(flags)} need --rerank")
        return {}
    return {"rerank": args.rerank, "rerank_params": params}


def print_table(results: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results.items():
        if name.startswith("num_"):
            text = str(int(value))
        elif isinstance(value, float) and math.isnan(value):
            text = "nan"
        else:
            text = f"{value:.4f}"
        table.add_row(name, text)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    if (args.run_dir is None) == (args.embeddings is None):
        raise SystemExit("fairdml eval: give either RUN_DIR or --embeddings FILE.npz (one)")
    if args.out is not None and args.out.exists() and not args.force:
        raise SystemExit(f"fairdml eval: {args.out} exists; pass --force to overwrite it")
    if args.memory_budget_mib < 1:
        raise SystemExit(f"--memory-budget-mib must be positive, got {args.memory_budget_mib}")
    options = _options(args)
    if args.run_dir is not None:
        from fairdml.train.final import evaluate_run

        results = evaluate_run(args.run_dir, **options)
        title = f"fairdml eval {args.run_dir}"
    else:
        import torch

        from fairdml.eval.evaluate import evaluate

        arrays = load_npz(args.embeddings)
        device = torch.device(args.device)
        tensors = {
            k: torch.from_numpy(arrays[k]).to(device)
            for k in ("embeddings", "queries")
            if k in arrays
        }
        results = evaluate(
            tensors["embeddings"],
            arrays["labels"],
            queries=tensors.get("queries"),
            query_labels=arrays.get("query_labels"),
            **options,
        )
        title = f"fairdml eval {args.embeddings}"
    print_table(results, title)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # NaN (no valid query) is written as null: JSON has no NaN.
        clean = {k: (None if math.isnan(v) else v) for k, v in results.items()}
        args.out.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return 0
