"""Models: trunks (backbones), heads (pooling, embedding, normalisation) and the Embedder.

Public API::

    create_embedder(trunk="resnet50", pooling="avg+max", embedding_dim=512, ...) -> Embedder
    create_trunk(name, pretrained=True, weights=None, in_channels=3, ...) -> Trunk
    trunk_names(), register_trunk(name), pooling_names(), normalization_names()

See :mod:`fairdml.models.trunks`, :mod:`fairdml.models.heads` and
:mod:`fairdml.models.embedder`. Trunk families with heavy imports (torchvision, timm) are
imported only when one of their trunks is built.
"""

from __future__ import annotations

from fairdml.models.embedder import Embedder, create_embedder
from fairdml.models.heads import Head, normalization_names, pooling_names
from fairdml.models.preprocessing import Preprocessing
from fairdml.models.trunks import Trunk, create_trunk, register_trunk, trunk_names
from fairdml.models.weights import PretrainedWeightsUnavailable, WeightsMismatchError

__all__ = [
    "Embedder",
    "Head",
    "Preprocessing",
    "PretrainedWeightsUnavailable",
    "Trunk",
    "WeightsMismatchError",
    "create_embedder",
    "create_trunk",
    "normalization_names",
    "pooling_names",
    "register_trunk",
    "trunk_names",
]
