"""Validation and normalisation of the inputs of :func:`fairdml.evaluate`.

Everything that can make a metric silently wrong is rejected here with a message that
names the argument, the value and what was expected: NaN or inf in embeddings, 1-D
embeddings, mismatched lengths, empty input, float labels (a float cast merges integer
labels above 2**24, so labels are compared exactly as integers or strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DISTANCES = ("cosine", "euclidean")


@dataclass(frozen=True)
class EvalInputs:
    """Validated inputs: float32 embeddings on one device and dense integer label codes.

    ``gallery_codes`` and ``query_codes`` index one shared vocabulary, so equal codes mean
    exactly equal original labels. ``queries`` is ``None`` in same-set mode.
    """

    gallery: torch.Tensor
    gallery_codes: torch.Tensor
    queries: torch.Tensor | None
    query_codes: torch.Tensor | None
    num_classes: int

    @property
    def same_set(self) -> bool:
        return self.queries is None

    @property
    def device(self) -> torch.device:
        return self.gallery.device


def as_embeddings(value: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """A 2-D finite floating tensor (float32 unless float64 is given) from numpy or torch."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value)!r}")
    if device is not None:
        tensor = tensor.to(device)
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (items x dimensions), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 items); at least one item is needed")
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has 0 dimensions; expected at least one")
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or _is_integer(tensor)):
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.dtype != torch.float64:
        tensor = tensor.to(torch.float32)
    finite = torch.isfinite(tensor).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise ValueError(
            f"{name} contains NaN or inf in {int((~finite).sum())} rows (first: {bad}); "
            "embeddings must be finite"
        )
    return tensor.contiguous()


def _is_integer(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex()


def as_label_array(value: Any, name: str) -> np.ndarray:
    """A 1-D numpy array of integer or string labels, compared exactly later on."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{name} must hold integer labels, got torch dtype {value.dtype}; "
                "float labels are ambiguous above 2**24 and are not accepted"
            )
        array = value.detach().cpu().numpy()
    else:
        array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per item), got shape {array.shape}")
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "U":
        return array
    if array.dtype.kind == "O":
        kinds = {type(x) for x in array.tolist()}
        if kinds <= {str}:
            return array.astype(str)
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in array):
            return np.array([int(x) for x in array], dtype=object)
        raise TypeError(
            f"{name} must hold only integers or only strings, got types "
            f"{sorted(k.__name__ for k in kinds)}"
        )
    raise TypeError(
        f"{name} must hold integer or string labels, got numpy dtype {array.dtype}; "
        "float labels are ambiguous above 2**24 and are not accepted"
    )


def encode_labels(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Dense codes 0..C-1 over the union of ``arrays`` (exact comparison) and C."""
    kinds = {a.dtype.kind for a in arrays}
    if "U" in kinds and len(kinds) > 1:
        raise TypeError(
            "labels and query_labels must both be integers or both be strings, "
            f"got numpy kinds {sorted(kinds)}"
        )
    if "O" in kinds or ("i" in kinds and "u" in kinds):
        # Python ints compare exactly at any size; mixed int64/uint64 would go through float.
        joined = np.array([int(x) for a in arrays for x in a.tolist()], dtype=object)
        uniques = sorted(set(joined.tolist()))
        lookup = {v: i for i, v in enumerate(uniques)}
        codes = np.fromiter((lookup[v] for v in joined.tolist()), dtype=np.int64, count=len(joined))
        num_classes = len(uniques)
    else:
        joined = np.concatenate(arrays)
        uniques, codes = np.unique(joined, return_inverse=True)
        num_classes = len(uniques)
    out = []
    start = 0
    for a in arrays:
        out.append(codes[start : start + len(a)].astype(np.int64).reshape(-1))
        start += len(a)
    return out, num_classes


def prepare_inputs(
    embeddings: Any,
    labels: Any,
    queries: Any = None,
    query_labels: Any = None,
) -> EvalInputs:
    """Check and convert everything; see the module docstring for what is refused."""
    gallery = as_embeddings(embeddings, "embeddings")
    gallery_labels = as_label_array(labels, "labels")
    if len(gallery_labels) != gallery.shape[0]:
        raise ValueError(
            f"embeddings has {gallery.shape[0]} rows but labels has {len(gallery_labels)} "
            "entries; expected one label per row"
        )
    if (queries is None) != (query_labels is None):
        raise ValueError("queries and query_labels must be given together (or neither)")
    if queries is None:
        (codes,), num_classes = encode_labels(gallery_labels)
        return EvalInputs(
            gallery=gallery,
            gallery_codes=torch.from_numpy(codes).to(gallery.device),
            queries=None,
            query_codes=None,
            num_classes=num_classes,
        )
    query = as_embeddings(queries, "queries", device=gallery.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries have {query.shape[1]} dimensions but embeddings have {gallery.shape[1]}"
        )
    if query.dtype != gallery.dtype:
        query = query.to(gallery.dtype)
    q_labels = as_label_array(query_labels, "query_labels")
    if len(q_labels) != query.shape[0]:
        raise ValueError(
            f"queries has {query.shape[0]} rows but query_labels has {len(q_labels)} "
            "entries; expected one label per row"
        )
    (g_codes, q_codes), num_classes = encode_labels(gallery_labels, q_labels)
    return EvalInputs(
        gallery=gallery,
        gallery_codes=torch.from_numpy(g_codes).to(gallery.device),
        queries=query,
        query_codes=torch.from_numpy(q_codes).to(gallery.device),
        num_classes=num_classes,
    )


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (cosine 0 to everything)."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norms.clamp_min(torch.finfo(x.dtype).tiny)
