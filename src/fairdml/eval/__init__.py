"""Exact, fast retrieval and clustering evaluation (``fairdml.evaluate``).

Modules: :mod:`.inputs` (validation), :mod:`.neighbors` (exact chunked top-k),
:mod:`.metrics` (recall@K, r_precision, map@r, map), :mod:`.clustering` (k-means, NMI,
F1), :mod:`.evaluate` (the public function), :mod:`.command` (``fairdml eval``).
"""

from fairdml.eval.evaluate import METRICS, evaluate
from fairdml.eval.neighbors import exact_knn, iter_neighbors

__all__ = ["METRICS", "evaluate", "exact_knn", "iter_neighbors"]
