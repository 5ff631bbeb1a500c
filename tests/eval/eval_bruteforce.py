"""Brute-force reference metrics for the eval tests: full float64 ranking, plain loops.

Independent of fairdml.eval: every query's whole ranking is materialised with numpy
(score descending, then gallery index ascending) and the definitions of REFERENCE.md are
applied literally.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def scores(queries: np.ndarray, gallery: np.ndarray, distance: str) -> np.ndarray:
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    if distance == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return q @ g.T
    return -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def rankings(queries, gallery, same_set: bool, distance: str) -> list[np.ndarray]:
    s = scores(queries, gallery, distance)
    out = []
    for i, row in enumerate(s):
        order = np.lexsort((np.arange(len(row)), -row))
        if same_set:
            order = order[order != i]
        out.append(order)
    return out


def retrieval(embeddings, labels, queries=None, query_labels=None, recall_ks=(1, 2, 4, 8),
              distance="cosine") -> dict[str, float]:
    same_set = queries is None
    q = embeddings if same_set else queries
    ql = labels if same_set else query_labels
    labels = list(labels)
    ranks = rankings(q, embeddings, same_set, distance)
    totals = {f"recall@{k}": 0.0 for k in recall_ks}
    totals.update({"r_precision": 0.0, "map@r": 0.0, "map": 0.0})
    used = skipped = 0
    for i, order in enumerate(ranks):
        rel = [labels[j] == ql[i] for j in order]
        r = sum(rel)
        if r == 0:
            skipped += 1
            continue
        used += 1
        for k in recall_ks:
            totals[f"recall@{k}"] += float(any(rel[:k]))
        totals["r_precision"] += sum(rel[:r]) / r
        hits, ap_r, ap = 0, 0.0, 0.0
        for pos, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                ap += hits / pos
                if pos <= r:
                    ap_r += hits / pos
        totals["map@r"] += ap_r / r
        totals["map"] += ap / r
    out = {k: v / used if used else float("nan") for k, v in totals.items()}
    out["num_queries"] = float(used)
    out["num_skipped_queries"] = float(skipped)
    return out


def pair_f1(classes, clusters) -> float:
    n = len(classes)
    tp = same_cluster = same_class = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = classes[i] == classes[j], clusters[i] == clusters[j]
            tp += a and b
            same_cluster += b
            same_class += a
    if tp == 0:
        return 0.0
    p, r = tp / same_cluster, tp / same_class
    return 2 * p * r / (p + r)


def nmi(classes, clusters) -> float:
    return normalized_mutual_info_score(classes, clusters, average_method="arithmetic")
