"""A small CNN trunk for tiny images (28x28 Omniglot / MNIST-like, 8x8 digits).

Four blocks of 3x3 convolution (64 channels, padding 1) + BatchNorm + ReLU + 2x2 max-pool,
the "conv-4" backbone of the few-shot literature (Vinyals et al. 2016, Snell et al. 2017).
A block skips its pooling when the map is already 1 pixel high or wide, so 8x8 inputs give
8 -> 4 -> 2 -> 1 -> 1 and 28x28 inputs 28 -> 14 -> 7 -> 3 -> 1.

There are no published weights for this trunk: it is always randomly initialised and
``pretrained`` is accepted only so that every trunk shares one factory signature.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fairdml.models.preprocessing import Preprocessing
from fairdml.models.trunks import Trunk, register_trunk

CHANNELS = 64
BLOCKS = 4


class ConvBlock(nn.Module):
    """3x3 conv + BatchNorm + ReLU, then 2x2 max-pool unless the map is 1 pixel thin."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        if min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, kernel_size=2)
        return x


@register_trunk("small_cnn")
class SmallCNN(Trunk):
    """Conv-4 trunk; feature map of 64 channels. Inputs normalised as (x - 0.5) / 0.5."""

    feature_dim = CHANNELS

    def __init__(self, *, pretrained: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        widths = [in_channels] + [CHANNELS] * BLOCKS
        self.blocks = nn.Sequential(*(ConvBlock(widths[i], widths[i + 1])
                                      for i in range(BLOCKS)))
        self.preprocessing = Preprocessing(mean=(0.5,) * in_channels, std=(0.5,) * in_channels,
                                           crop_size=None, resize_size=None,
                                           in_channels=in_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images)
