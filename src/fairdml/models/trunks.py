"""Trunks (backbones): the registry, the :class:`Trunk` contract and frozen BatchNorm.

A trunk is an ``nn.Module`` whose ``forward(images)`` returns

* a feature map ``(B, feature_dim, H, W)`` when ``output_format == "map"`` (CNNs), or
* tokens ``(B, num_prefix_tokens + N, feature_dim)`` when ``output_format == "tokens"``
  (ViTs: the CLS token -- and DeiT's distillation token -- first, then N patch tokens,
  after the final LayerNorm).

Pooling is the head's job (:mod:`fairdml.models.heads`). Each trunk declares its
``feature_dim`` and its :class:`~fairdml.models.preprocessing.Preprocessing`.

Registered trunks (``trunk_names()``):

==========================  =============================================  ==========
name                        architecture / weights                         feature_dim
==========================  =============================================  ==========
small_cnn                   4 x (conv3x3-BN-ReLU-maxpool2), 64 channels    64
resnet18, resnet50          torchvision, IMAGENET1K_V1                     512, 2048
googlenet                   torchvision, no auxiliary heads                1024
bninception                 fairdml (Ioffe & Szegedy 2015), Caffe weights  1024
vit_s16 / dino_vit_s16      timm ViT-S/16 (augreg) / DINO ViT-S/16         384
deit_s / deit_s_distilled   timm DeiT-S / DeiT-S distilled                 384
==========================  =============================================  ==========

The timm model names (``vit_small_patch16_224``, ``deit_small_patch16_224``,
``deit_small_distilled_patch16_224``, ``vit_small_patch16_224.dino``) are accepted too.

Add a trunk with ``@register_trunk("name")`` on a class or function taking the keyword
arguments ``pretrained: bool`` and ``in_channels: int`` and returning a :class:`Trunk`;
:func:`create_trunk` adds local weights (``weights=PATH``) and BatchNorm freezing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fairdml.models.preprocessing import Preprocessing
from fairdml.models.weights import adapt_input_channels, load_matching, read_state_dict
from fairdml.registry import Registry

TRUNKS: Registry[Callable[..., Any]] = Registry("trunk")
OUTPUT_FORMATS = ("map", "tokens")


def register_trunk(name: str) -> Callable[[Any], Any]:
    """Decorator registering a trunk factory (class or function) under ``name``."""
    return TRUNKS.register(name)


def trunk_names() -> list[str]:
    """Names of all registered trunks, sorted."""
    return TRUNKS.names()


class Trunk(nn.Module):
    """Base class of trunks: declared output, weight loading and frozen BatchNorm.

    Subclasses set ``feature_dim``, ``preprocessing`` and, for ViTs, ``output_format =
    "tokens"`` and ``num_prefix_tokens``; they may override :meth:`adapt_state_dict` to map
    a published file's key names onto their own.
    """

    feature_dim: int
    preprocessing: Preprocessing
    output_format: str = "map"
    num_prefix_tokens: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.freeze_batchnorm = False
        self.freeze_batchnorm_affine = False

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a published weights file onto this trunk's keys (default: unchanged)."""
        return state

    def load_weights(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """Load published or local weights; see :func:`fairdml.models.weights.load_matching`."""
        state = adapt_input_channels(self, self.adapt_state_dict(dict(state)))
        load_matching(self, state, source=source)

    def batchnorm_layers(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """All BatchNorm layers of the trunk."""
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def set_batchnorm_frozen(self, statistics: bool, affine: bool = False) -> None:
        """Freeze BatchNorm running statistics (and, with ``affine``, weight and bias).

        Frozen statistics: the BatchNorm layers stay in eval mode even when the trunk is in
        train mode, so they normalise with, and never update, their running mean/variance
        (the usual DML protocol for ImageNet-pretrained trunks and small batches).
        """
        if affine and not statistics:
            raise ValueError("freeze_batchnorm_affine=True requires freeze_batchnorm=True")
        self.freeze_batchnorm = bool(statistics)
        self.freeze_batchnorm_affine = bool(affine)
        for layer in self.batchnorm_layers():
            for parameter in (layer.weight, layer.bias):
                if parameter is not None:
                    parameter.requires_grad_(not affine)
        self.train(self.training)

    def train(self, mode: bool = True) -> Trunk:
        super().train(mode)
        if self.freeze_batchnorm:
            for layer in self.batchnorm_layers():
                layer.eval()
        return self


# Built-in trunks live in one module per family, imported on first use.
for _name in ("small_cnn",):
    TRUNKS.register_lazy(_name, "fairdml.models.small_cnn")
for _name in ("resnet18", "resnet50", "googlenet"):
    TRUNKS.register_lazy(_name, "fairdml.models.torchvision_trunks")
TRUNKS.register_lazy("bninception", "fairdml.models.bninception")
for _name in ("vit_s16", "deit_s", "deit_s_distilled", "dino_vit_s16", "vit_small_patch16_224",
              "deit_small_patch16_224", "deit_small_distilled_patch16_224",
              "vit_small_patch16_224.dino"):
    TRUNKS.register_lazy(_name, "fairdml.models.vit")


def create_trunk(name: str, *, pretrained: bool = True,
                 weights: str | os.PathLike[str] | None = None, in_channels: int = 3,
                 freeze_batchnorm: bool = False,
                 freeze_batchnorm_affine: bool = False) -> Trunk:
    """Build trunk ``name``.

    ``pretrained``: load the published ImageNet weights when they can be fetched, else
    random initialisation with one :class:`PretrainedWeightsUnavailable` warning.
    ``weights``: a local state-dict file loaded instead of the published weights (it must
    match; see :mod:`fairdml.models.weights`). ``in_channels``: 3, or 1 for grayscale.
    ``freeze_batchnorm`` / ``freeze_batchnorm_affine``: see :meth:`Trunk.set_batchnorm_frozen`.
    """
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels not in (
            1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    factory = TRUNKS.get(name)
    trunk = factory(pretrained=bool(pretrained) and weights is None, in_channels=in_channels)
    if not isinstance(trunk, Trunk):
        raise TypeError(f"trunk factory {name!r} returned {type(trunk).__name__}, "
                        f"expected a fairdml.models.Trunk")
    _check_declarations(name, trunk)
    if weights is not None:
        trunk.load_weights(read_state_dict(weights), source=f"file {str(weights)!r}")
    trunk.set_batchnorm_frozen(freeze_batchnorm, freeze_batchnorm_affine)
    return trunk


def _check_declarations(name: str, trunk: Trunk) -> None:
    if not isinstance(getattr(trunk, "feature_dim", None), int) or trunk.feature_dim < 1:
        raise TypeError(f"trunk {name!r} must declare a positive int feature_dim")
    if not isinstance(getattr(trunk, "preprocessing", None), Preprocessing):
        raise TypeError(f"trunk {name!r} must declare preprocessing: Preprocessing")
    if trunk.output_format not in OUTPUT_FORMATS:
        raise TypeError(f"trunk {name!r} has output_format {trunk.output_format!r}; "
                        f"expected one of {OUTPUT_FORMATS}")
