"""Optional approximate neighbour search with faiss (IVF or HNSW), selected explicitly.

For galleries too large for exact search. The numbers it gives are approximate (a true
neighbour can be missed), so :func:`fairdml.evaluate` only uses it when asked with
``search="faiss-ivf"`` or ``search="faiss-hnsw"``. Needs ``faiss-cpu`` (the ``faiss``
extra of fairdml). Search runs on the CPU with float32 copies of the inputs.

- ``faiss-ivf``: ``IndexIVFFlat`` with ``nlist = 4 * sqrt(n)`` lists trained on the
  gallery, searched with ``nprobe`` lists (default 32).
- ``faiss-hnsw``: ``IndexHNSWFlat`` with ``M = 32`` links, ``efSearch = max(2k, 128)``.

Cosine uses inner product on the L2-normalised vectors; euclidean uses L2 (faiss reports
squared distances, returned negated as scores). Ties are ordered by faiss, not by index.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KINDS = ("faiss-ivf", "faiss-hnsw")


def approximate_knn(
    gallery: torch.Tensor,
    k: int,
    *,
    kind: str,
    queries: torch.Tensor | None = None,
    distance: str = "cosine",
    nprobe: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, indices)`` of shape ``(n_queries, k)``, best first, on the gallery's device.

    Without ``queries`` the gallery searches itself and each item's own index is removed
    from its list (k + 1 are searched).
    """
    if kind not in KINDS:
        raise ValueError(f"approximate search kind must be one of {KINDS}, got {kind!r}")
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            f"search={kind!r} needs faiss: pip install 'fairdml[faiss]' (faiss-cpu)"
        ) from error
    same_set = queries is None
    base = gallery.detach().float().cpu().numpy()
    probe = base if same_set else queries.detach().float().cpu().numpy()
    n, dim = base.shape
    want = k + 1 if same_set else k
    if want > n:
        raise ValueError(f"k={k} is larger than the number of gallery candidates")
    metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
    if kind == "faiss-ivf":
        nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        index.train(base)
        index.nprobe = min(nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, metric)
        index.hnsw.efSearch = max(2 * want, 128)
    index.add(base)
    scores, indices = index.search(probe, want)
    if (indices < 0).any():
        raise RuntimeError(
            f"{kind} returned fewer than {want} neighbours for some queries; "
            "raise nprobe or use exact search"
        )
    if distance == "euclidean":
        scores = -scores
    if same_set:
        scores, indices = _drop_self(scores, indices, k)
    device = gallery.device
    return torch.from_numpy(scores).to(device), torch.from_numpy(indices).long().to(device)


def _drop_self(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    rows = np.arange(indices.shape[0])[:, None]
    keep = indices != rows
    # Rows where the item itself was not returned keep their first k.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)
