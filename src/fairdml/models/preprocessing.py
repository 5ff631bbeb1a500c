"""The input convention a trunk's weights were trained with.

Every trunk declares a :class:`Preprocessing`; the data transforms follow it so that an
image reaches the network exactly as its pretrained weights expect. Getting this wrong
does not crash, it silently costs accuracy (BN-Inception's Caffe weights want BGR pixels
in 0-255 minus a per-channel mean; torchvision's GoogLeNet weights want (x - 0.5) / 0.5),
which is why it is a declared, tested fact of each trunk rather than a transform default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLOR_ORDERS = ("RGB", "BGR")
INPUT_RANGES = (1.0, 255.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an RGB image with values in [0, 1] into a trunk's input.

    ``normalize`` computes ``(reorder(x) * input_range - mean) / std`` channel-wise, where
    ``reorder`` swaps RGB to BGR when ``color_order == "BGR"``. ``mean`` and ``std`` are
    given in the trunk's own channel order and value range (BN-Inception: BGR means
    ``(104, 117, 128)`` on the 0-255 scale, std 1).

    ``crop_size`` / ``resize_size`` are the default test-time protocol (resize the shorter
    side to ``resize_size``, centre-crop ``crop_size``); ``None`` means "use the image at its
    native size" (small images such as 28x28 Omniglot or 8x8 digits).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    color_order: str = "RGB"
    input_range: float = 1.0
    crop_size: int | None = 224
    resize_size: int | None = 256
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"Preprocessing.in_channels must be a positive int, "
                             f"got {self.in_channels!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != self.in_channels:
                raise ValueError(f"Preprocessing.{key} has {len(values)} values {values} but "
                                 f"in_channels is {self.in_channels}; expected one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing.std must be positive, got {self.std}")
        if self.color_order not in COLOR_ORDERS:
            raise ValueError(f"Preprocessing.color_order must be one of {COLOR_ORDERS}, "
                             f"got {self.color_order!r}")
        if float(self.input_range) not in INPUT_RANGES:
            raise ValueError(f"Preprocessing.input_range must be one of {INPUT_RANGES}, "
                             f"got {self.input_range!r}")
        object.__setattr__(self, "input_range", float(self.input_range))
        for key in ("crop_size", "resize_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Preprocessing.{key} must be a positive int or None, "
                                 f"got {value!r}")
        if (self.crop_size is not None and self.resize_size is not None
                and self.crop_size > self.resize_size):
            raise ValueError(f"Preprocessing.crop_size {self.crop_size} is larger than "
                             f"resize_size {self.resize_size}")

    @property
    def is_plain_normalize(self) -> bool:
        """True when ``torchvision.transforms.Normalize(mean, std)`` applied to RGB tensors in
        [0, 1] equals :meth:`normalize`. When False (BN-Inception: BGR, 0-255), a pipeline
        must end with :meth:`normalize` itself (picklable, so DataLoader workers can use it)
        instead of ``Normalize(mean, std)``, or the trunk silently sees wrong inputs."""
        return self.input_range == 1.0 and (self.color_order == "RGB" or self.in_channels == 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB images in [0, 1], shape (B, C, H, W) or (C, H, W), to the trunk's input."""
        channel_dim = images.dim() - 3
        if images.dim() not in (3, 4) or images.shape[channel_dim] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W) or "
                             f"({self.in_channels}, H, W), got {tuple(images.shape)}")
        if self.color_order == "BGR" and self.in_channels == 3:
            images = images.flip(channel_dim)
        shape = [1] * images.dim()
        shape[channel_dim] = self.in_channels
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        return (images * self.input_range - mean) / std

    def with_channels(self, in_channels: int) -> Preprocessing:
        """The same convention for ``in_channels`` inputs.

        One channel (grayscale) uses the average of the colour means and stds, which is
        what the summed first-layer filters of :func:`adapt_input_channels` expect.
        """
        if in_channels == self.in_channels:
            return self
        if in_channels != 1:
            raise ValueError(f"cannot derive a {in_channels}-channel preprocessing from a "
                             f"{self.in_channels}-channel one; only 1 (grayscale) is supported")
        mean = sum(self.mean) / len(self.mean)
        std = sum(self.std) / len(self.std)
        return Preprocessing(mean=(mean,), std=(std,), color_order=self.color_order,
                             input_range=self.input_range, crop_size=self.crop_size,
                             resize_size=self.resize_size, in_channels=1)
