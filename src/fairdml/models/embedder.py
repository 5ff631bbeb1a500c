"""The Embedder: trunk + head, images -> embeddings (B, embedding_dim)."""

from __future__ import annotations

import os

import torch
from torch import nn

from fairdml.models.heads import Head
from fairdml.models.preprocessing import Preprocessing
from fairdml.models.trunks import Trunk, create_trunk


class Embedder(nn.Module):
    """``forward(images) = head(trunk(images))``.

    Attributes: ``trunk``, ``head``, ``embedding_dim``, ``preprocessing`` (the trunk's input
    convention, which the data transforms follow).
    """

    def __init__(self, trunk: Trunk, head: Head) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    @property
    def embedding_dim(self) -> int:
        return self.head.embedding_dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self.trunk.preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, flip_average: bool = False) -> torch.Tensor:
        """Embeddings without gradients; the caller chooses the mode (``eval()`` for tests).

        ``flip_average``: test-time augmentation averaging the image with its horizontal
        flip (last axis). The two views' embeddings are averaged and re-normalised per the
        head's normalisation (its ``average``; for ``l2`` the renormalised mean of the two
        unit vectors, see :mod:`fairdml.models.heads`).
        """
        if not flip_average:
            return self(images)
        views = torch.stack([self.head.project(self.trunk(images)),
                             self.head.project(self.trunk(images.flip(-1)))])
        return self.head.normalization.average(views)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: ``"trunk"`` and ``"head"`` (frozen ones left out).

        The trainer gives each group its learning rate (and trains only ``"head"`` during
        warm-up epochs).
        """
        return {
            "trunk": [p for p in self.trunk.parameters() if p.requires_grad],
            "head": [p for p in self.head.parameters() if p.requires_grad],
        }


def create_embedder(*, trunk: str = "small_cnn", pretrained: bool = True,
                    weights: str | os.PathLike[str] | None = None, in_channels: int = 3,
                    freeze_batchnorm: bool = False, freeze_batchnorm_affine: bool = False,
                    pooling: str = "avg", embedding_dim: int | None = 128,
                    layer_norm: bool | str = False, normalization: str = "l2",
                    beta: float = 0.0, curvature: float = 0.1,
                    clip_radius: float | None = 2.3) -> Embedder:
    """Build trunk ``trunk`` (see :func:`create_trunk`) and a :class:`Head` on top of it.

    ``embedding_dim=None`` means no linear layer: the embedding is the pooled trunk feature
    (the untrained-trunk baseline); ``embedding_dim=0`` is an error. For ViT trunks
    ``pooling="cls"`` selects the CLS token and the other poolings pool the patch tokens.
    """
    # Validate the head first: a bad option should not cost building (or fetching) a trunk.
    Head(1, pooling=pooling if pooling != "cls" else "avg", embedding_dim=embedding_dim,
         layer_norm=layer_norm, normalization=normalization, beta=beta, curvature=curvature,
         clip_radius=clip_radius)
    backbone = create_trunk(trunk, pretrained=pretrained, weights=weights,
                            in_channels=in_channels, freeze_batchnorm=freeze_batchnorm,
                            freeze_batchnorm_affine=freeze_batchnorm_affine)
    head = Head(backbone.feature_dim, pooling=pooling, embedding_dim=embedding_dim,
                layer_norm=layer_norm, normalization=normalization, beta=beta,
                curvature=curvature, clip_radius=clip_radius,
                input_format=backbone.output_format,
                num_prefix_tokens=backbone.num_prefix_tokens)
    return Embedder(backbone, head)
