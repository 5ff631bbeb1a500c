"""torchvision trunks: ResNet-18, ResNet-50 and GoogLeNet without their classifiers.

The trunk keeps torchvision's module names, so its state-dict keys are those of the
published files minus the classifier (``fc.*``; GoogLeNet also ``aux1.*``, ``aux2.*``),
which :meth:`adapt_state_dict` drops. ``weights=PATH`` therefore takes a torchvision
checkpoint as is.

Weights: ``IMAGENET1K_V1`` (the classic weights used by the DML literature, not the newer
V2 training recipe). GoogLeNet's published weights were trained on inputs scaled as
``(x - 0.5) / 0.5``; torchvision hides this behind ``transform_input=True``, fairdml
declares it as the trunk's preprocessing instead (mean = std = 0.5) and feeds the network
directly, so the same transform is right with and without pretrained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fairdml.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from fairdml.models.trunks import Trunk, register_trunk
from fairdml.models.weights import fetch_state_dict, warn_unavailable


@dataclass(frozen=True)
class _Spec:
    builder: str
    weights_enum: str
    stages: tuple[str, ...]
    classifier: tuple[str, ...]
    feature_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    first_conv: str


_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_SPECS = {
    "resnet18": _Spec("resnet18", "ResNet18_Weights", _RESNET_STAGES, ("fc.",), 512,
                      IMAGENET_MEAN, IMAGENET_STD, "conv1"),
    "resnet50": _Spec("resnet50", "ResNet50_Weights", _RESNET_STAGES, ("fc.",), 2048,
                      IMAGENET_MEAN, IMAGENET_STD, "conv1"),
    "googlenet": _Spec(
        "googlenet", "GoogLeNet_Weights",
        ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
         "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
         "maxpool4", "inception5a", "inception5b"),
        ("fc.", "aux1.", "aux2."), 1024, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "conv1.conv"),
}


class TorchvisionTrunk(Trunk):
    """The convolutional stages of a torchvision classifier, applied in order."""

    def __init__(self, name: str, *, pretrained: bool, in_channels: int) -> None:
        super().__init__()
        import torchvision

        spec = _SPECS[name]
        kwargs = {"aux_logits": False, "transform_input": False, "init_weights": True} \
            if name == "googlenet" else {}
        model = getattr(torchvision.models, spec.builder)(weights=None, **kwargs)
        if in_channels != 3:
            _replace_first_conv(model, spec.first_conv, in_channels)
        for stage in spec.stages:
            self.add_module(stage, getattr(model, stage))
        self.name = name
        self._stages = spec.stages
        self._classifier = spec.classifier
        self.feature_dim = spec.feature_dim
        self.preprocessing = Preprocessing(mean=spec.mean, std=spec.std, crop_size=224,
                                           resize_size=256).with_channels(in_channels)
        if pretrained:
            weights = getattr(torchvision.models, spec.weights_enum).IMAGENET1K_V1
            try:
                self.load_weights(fetch_state_dict(weights.url), source=f"torchvision {weights}")
            except Exception as error:  # offline, proxy, corrupt or foreign cached file
                warn_unavailable(name, str(error))

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in state.items()
                if not key.startswith(self._classifier)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for stage in self._stages:
            x = getattr(self, stage)(x)
        return x


def _replace_first_conv(model: nn.Module, path: str, in_channels: int) -> None:
    *parents, leaf = path.split(".")
    owner = model
    for part in parents:
        owner = getattr(owner, part)
    old: nn.Conv2d = getattr(owner, leaf)
    setattr(owner, leaf, nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                                   stride=old.stride, padding=old.padding,
                                   bias=old.bias is not None))


@register_trunk("resnet18")
def resnet18(*, pretrained: bool = True, in_channels: int = 3) -> TorchvisionTrunk:
    """ResNet-18 (He et al. 2016); map of 512 channels at stride 32."""
    return TorchvisionTrunk("resnet18", pretrained=pretrained, in_channels=in_channels)


@register_trunk("resnet50")
def resnet50(*, pretrained: bool = True, in_channels: int = 3) -> TorchvisionTrunk:
    """ResNet-50 (He et al. 2016); map of 2048 channels at stride 32."""
    return TorchvisionTrunk("resnet50", pretrained=pretrained, in_channels=in_channels)


@register_trunk("googlenet")
def googlenet(*, pretrained: bool = True, in_channels: int = 3) -> TorchvisionTrunk:
    """GoogLeNet / Inception-v1 (Szegedy et al. 2015) without auxiliary heads; 1024 channels."""
    return TorchvisionTrunk("googlenet", pretrained=pretrained, in_channels=in_channels)
