"""Reading weight files, matching them to a trunk, and fetching published weights.

Policy (DESIGN.md "Dependencies"): published weights come from torchvision / timm when the
machine can fetch them; everything also runs from random initialisation. When weights were
asked for and cannot be had, the trunk is built randomly initialised and ONE
:class:`PretrainedWeightsUnavailable` warning says so -- never a crash, never a silent
random trunk. A machine without network costs at most one short connection attempt per
host per process (the answer is cached); ``FAIRDML_OFFLINE=1`` skips even that.

A local file (``weights=PATH``) must match the trunk exactly, up to the documented
adaptations (classifier keys dropped, key renaming of a trunk's ``adapt_state_dict``, RGB
filters summed for one input channel, missing BatchNorm ``num_batches_tracked`` counters).
Anything else raises :class:`WeightsMismatchError` naming the missing and unexpected keys
and the shape differences.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairdml import registry

OFFLINE_ENV = "FAIRDML_OFFLINE"
_SHOWN = 5  # how many keys of each kind an error message lists


class PretrainedWeightsUnavailable(UserWarning):
    """Pretrained weights were requested but could not be obtained; weights are random."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the trunk it was loaded into."""


def warn_unavailable(trunk: str, reason: str) -> None:
    """The one warning a trunk emits when it falls back to random initialisation."""
    warnings.warn(
        f"pretrained weights for trunk {trunk!r} are unavailable ({reason}); the trunk is "
        f"RANDOMLY INITIALISED. Pass weights=PATH to load a local file, or pretrained=False "
        f"to silence this warning.",
        PretrainedWeightsUnavailable,
        stacklevel=_first_external_stacklevel(),
    )


def _first_external_stacklevel() -> int:
    """``stacklevel`` that attributes the warning to the first caller outside fairdml's
    model-building code (the user's ``create_embedder`` / ``create_trunk`` call)."""
    internal = (str(Path(__file__).resolve().parent), str(Path(registry.__file__).resolve()))
    frame = sys._getframe(2)  # the caller of warn_unavailable
    level = 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(
            internal):
        frame = frame.f_back
        level += 1
    return level


def offline() -> bool:
    """True when the user asked fairdml never to touch the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


@functools.cache
def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` s (cached)."""
    if offline():
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def fetch_state_dict(url: str) -> dict[str, torch.Tensor]:
    """The state dict at ``url``, from torch.hub's cache or downloaded (hash-checked).

    Raises ``OSError`` with the reason when the file is neither cached nor downloadable.
    """
    from urllib.parse import urlparse

    filename = Path(urlparse(url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if offline():
            raise OSError(f"{OFFLINE_ENV} is set and {cached} is not cached")
        if not host_reachable(parsed.hostname or "", port):
            raise OSError(f"{parsed.hostname} is unreachable and {cached} is not cached")
    return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True,
                                              map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (``torch.save`` pickle or ``.safetensors``).

    Unwraps the usual containers (``{"state_dict": ...}``, ``{"model": ...}``) and the
    ``module.`` prefix that ``DataParallel`` adds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: Any = load_file(str(path), device="cpu")
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"weights file {str(path)!r} could not be read as a torch "
                             f"state dict: {error}") from error
    for container in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(container), Mapping):
            loaded = loaded[container]
            break
    if not isinstance(loaded, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict "
                         f"(a mapping of parameter names to tensors)")
    state = dict(loaded)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def adapt_input_channels(module: nn.Module,
                         state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum 3-channel first-layer filters into one when the module takes grayscale input.

    A grey image replicated to three channels gives the same response with the summed
    filter, so pretrained features survive (up to the per-channel normalisation, which
    :meth:`Preprocessing.with_channels` averages).
    """
    own = module.state_dict()
    adapted = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if (target is not None and value.dim() == 4 and target.dim() == 4
                and value.shape[1] == 3 and target.shape[1] == 1
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]):
            adapted[key] = value.sum(dim=1, keepdim=True)
    return adapted


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module`` when keys and shapes match exactly; else a clear error."""
    own = module.state_dict()
    state = dict(state)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(own[key])  # old files predate the counter
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [f"{key}: file {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
              for key in own if key in state and state[key].shape != own[key].shape]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape differences", shapes)):
            if items:
                more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"{title} ({len(items)}): {', '.join(items[:_SHOWN])}{more}")
        raise WeightsMismatchError(f"weights {source} do not match the model: "
                                   + "; ".join(parts))
    module.load_state_dict(state, strict=True)
