"""BN-Inception (Inception-v2 with BatchNorm; Ioffe & Szegedy, ICML 2015), written for fairdml.

The architecture is the one of the widely used Caffe-to-PyTorch port in Cadene's
``pretrainedmodels`` (``bninception``), whose ImageNet weights most DML papers start from:
a 7x7/2 stem, 3x3 convolutions, ten inception modules (3a-3c, 4a-4e, 5a-5b; 3c and 4e
reduce resolution) with "double 3x3" branches, a 1024-channel output map at stride 32.
Every pooling uses ``ceil_mode=True`` as in Caffe, average-pooling branches count the
padding, and module 5b pools its pooling branch with max instead of average.

Input convention of those weights (the trunk's ``preprocessing``): BGR channel order,
values in 0-255, per-channel mean subtraction ``(104, 117, 128)`` (BGR) and std 1. The DML
protocol crops 227x227 from images resized to 256.

Loading the public weights from a local file::

    create_trunk("bninception", weights="bn_inception-52deb4733.pth")

The file is the one ``pretrainedmodels`` downloads
(``http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth``). The original
port ``bn_inception-9f5701afb96c8044.pth`` also works: its BatchNorm weights are stored
with shape (1, C), which :meth:`BNInception.adapt_state_dict` flattens. The port's flat key
names map onto fairdml's nested modules by :func:`from_cadene_key`::

    conv1_7x7_s2.weight                    -> conv1_7x7_s2.conv.weight
    conv1_7x7_s2_bn.running_mean           -> conv1_7x7_s2.bn.running_mean
    inception_3a_double_3x3_1.weight       -> inception_3a.conv_double_3x3_1.conv.weight
    inception_3a_pool_proj_bn.bias         -> inception_3a.pool_proj.bn.bias
    last_linear.* (ImageNet classifier)    -> dropped

(:func:`to_cadene_key` is the inverse, for exporting.) With ``pretrained=True`` the trunk
fetches that URL into torch.hub's cache when the machine is online.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from fairdml.models.preprocessing import Preprocessing
from fairdml.models.trunks import Trunk, register_trunk
from fairdml.models.weights import fetch_state_dict, warn_unavailable

CADENE_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
BGR_MEAN_255 = (104.0, 117.0, 128.0)


class ConvBNReLU(nn.Module):
    """Convolution (with bias, as in the Caffe model) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


@dataclass(frozen=True)
class InceptionSpec:
    """Channel widths of one module; ``out_1x1 == 0`` marks a stride-2 reduction module."""

    in_channels: int
    out_1x1: int
    reduce_3x3: int
    out_3x3: int
    reduce_double: int
    out_double: int
    pool: str  # "avg", "max" (stride 1) or "max_stride2" (reduction, no projection)
    pool_proj: int

    @property
    def out_channels(self) -> int:
        pooled = self.in_channels if self.pool_proj == 0 else self.pool_proj
        return self.out_1x1 + self.out_3x3 + self.out_double + pooled


SPECS: dict[str, InceptionSpec] = {
    "3a": InceptionSpec(192, 64, 64, 64, 64, 96, "avg", 32),
    "3b": InceptionSpec(256, 64, 64, 96, 64, 96, "avg", 64),
    "3c": InceptionSpec(320, 0, 128, 160, 64, 96, "max_stride2", 0),
    "4a": InceptionSpec(576, 224, 64, 96, 96, 128, "avg", 128),
    "4b": InceptionSpec(576, 192, 96, 128, 96, 128, "avg", 128),
    "4c": InceptionSpec(576, 160, 128, 160, 128, 160, "avg", 128),
    "4d": InceptionSpec(608, 96, 128, 192, 160, 192, "avg", 128),
    "4e": InceptionSpec(608, 0, 128, 192, 192, 256, "max_stride2", 0),
    "5a": InceptionSpec(1056, 352, 192, 320, 160, 224, "avg", 128),
    "5b": InceptionSpec(1024, 352, 192, 320, 192, 224, "max", 128),
}


class InceptionModule(nn.Module):
    """Four parallel branches concatenated: 1x1, 1x1-3x3, 1x1-3x3-3x3, pool(-1x1)."""

    def __init__(self, spec: InceptionSpec) -> None:
        super().__init__()
        stride = 2 if spec.out_1x1 == 0 else 1
        if spec.out_1x1:
            self.conv_1x1 = ConvBNReLU(spec.in_channels, spec.out_1x1, 1)
        self.conv_3x3_reduce = ConvBNReLU(spec.in_channels, spec.reduce_3x3, 1)
        self.conv_3x3 = ConvBNReLU(spec.reduce_3x3, spec.out_3x3, 3, stride, 1)
        self.conv_double_3x3_reduce = ConvBNReLU(spec.in_channels, spec.reduce_double, 1)
        self.conv_double_3x3_1 = ConvBNReLU(spec.reduce_double, spec.out_double, 3, 1, 1)
        self.conv_double_3x3_2 = ConvBNReLU(spec.out_double, spec.out_double, 3, stride, 1)
        if spec.pool == "avg":
            self.pool: nn.Module = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True,
                                                count_include_pad=True)
        elif spec.pool == "max":
            self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        else:
            self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        if spec.pool_proj:
            self.pool_proj = ConvBNReLU(spec.in_channels, spec.pool_proj, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = []
        if hasattr(self, "conv_1x1"):
            branches.append(self.conv_1x1(x))
        branches.append(self.conv_3x3(self.conv_3x3_reduce(x)))
        branches.append(self.conv_double_3x3_2(self.conv_double_3x3_1(
            self.conv_double_3x3_reduce(x))))
        pooled = self.pool(x)
        branches.append(self.pool_proj(pooled) if hasattr(self, "pool_proj") else pooled)
        return torch.cat(branches, dim=1)


@register_trunk("bninception")
class BNInception(Trunk):
    """BN-Inception trunk: 1024-channel map; preprocessing BGR, 0-255, mean (104, 117, 128)."""

    feature_dim = 1024

    def __init__(self, *, pretrained: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1_7x7_s2 = ConvBNReLU(in_channels, 64, 7, 2, 3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2_3x3_reduce = ConvBNReLU(64, 64, 1)
        self.conv2_3x3 = ConvBNReLU(64, 192, 3, 1, 1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, spec in SPECS.items():
            self.add_module(f"inception_{name}", InceptionModule(spec))
        self.preprocessing = Preprocessing(
            mean=BGR_MEAN_255, std=(1.0, 1.0, 1.0), color_order="BGR", input_range=255.0,
            crop_size=227, resize_size=256).with_channels(in_channels)
        if pretrained:
            try:
                self.load_weights(fetch_state_dict(CADENE_URL), source=f"from {CADENE_URL}")
            except Exception as error:  # offline, proxy, corrupt or foreign cached file
                warn_unavailable("bninception", str(error))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool1_3x3_s2(self.conv1_7x7_s2(images))
        x = self.pool2_3x3_s2(self.conv2_3x3(self.conv2_3x3_reduce(x)))
        for name in SPECS:
            x = getattr(self, f"inception_{name}")(x)
        return x

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename Cadene-port keys, drop its classifier, flatten (1, C) BatchNorm tensors.

        Keys already in fairdml's naming pass through unchanged.
        """
        own = self.state_dict()
        adapted = {}
        for key, value in state.items():
            if key.startswith(("last_linear.", "fc.")):
                continue
            new_key = key if key in own else from_cadene_key(key)
            target = own.get(new_key)
            if (target is not None and value.dim() == 2 and value.shape[0] == 1
                    and target.dim() == 1 and value.shape[1] == target.shape[0]):
                value = value.reshape(-1)
            adapted[new_key] = value
        return adapted


_CADENE_KEY = re.compile(r"^(?P<module>inception_\d[a-e]_|)(?P<layer>[^.]+?)(?P<bn>_bn)?"
                         r"\.(?P<param>[a-z_]+)$")


def from_cadene_key(key: str) -> str:
    """fairdml key of a Cadene ``pretrainedmodels`` BN-Inception key (unknown keys unchanged)."""
    match = _CADENE_KEY.match(key)
    if match is None:
        return key
    module, layer, bn, param = match.group("module", "layer", "bn", "param")
    part = "bn" if bn else "conv"
    if not module:
        return f"{layer}.{part}.{param}"
    layer = layer if layer == "pool_proj" else f"conv_{layer}"
    return f"{module[:-1]}.{layer}.{part}.{param}"


def to_cadene_key(key: str) -> str:
    """Cadene ``pretrainedmodels`` key of a fairdml BN-Inception key (inverse of the above)."""
    *path, part, param = key.split(".")
    suffix = "_bn" if part == "bn" else ""
    if len(path) == 1:
        return f"{path[0]}{suffix}.{param}"
    module, layer = path
    layer = layer if layer == "pool_proj" else layer.removeprefix("conv_")
    return f"{module}_{layer}{suffix}.{param}"
