"""Checkpoints: atomic writes, exact resume state, and a config compatibility check."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Config keys that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({
    "train.epochs", "train.progress", "train.device", "train.tensorboard", "train.log_every",
    "train.threads",
    "data.num_workers", "data.root", "data.download", "eval.batch_size",
})


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or belongs to another configuration."""


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write with a temporary file and a rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means unreadable
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error


def random_state() -> dict[str, Any]:
    """The global generators' states (user code such as transforms may draw from any)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(saved) | set(current))
    differences = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, prefix=f"{path}.")
        elif a != b:
            differences.append(path)
    return differences


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Raise when a checkpoint was written by a different configuration."""
    differing = [k for k in config_differences(saved, current) if k not in RESUMABLE_CHANGES]
    if differing:
        details = ", ".join(f"{k} (checkpoint {_lookup(saved, k)!r}, now {_lookup(current, k)!r})"
                            for k in differing[:5])
        raise CheckpointError(
            f"checkpoint {where} was written by another configuration: {details}"
        )


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values
