"""Image preprocessing presets: PIL image in, normalised float tensor ``(C, H, W)`` out.

``create(preset, train=...)`` returns a `Preprocess`, a callable that also says which
PIL mode the dataset must load images in (``image_mode``: ``"L"`` for one input channel,
``"RGB"`` for three). Each trunk declares its own mean, std and crop size; those are
parameters here, with each preset's defaults below.

standard
    The metric-learning protocol of the reality check (Musgrave et al., ECCV 2020) and
    most papers since: train = resize the shorter side to 256, ``RandomResizedCrop(227,
    scale=(0.16, 1), ratio=(3/4, 4/3))``, horizontal flip p=0.5; test = resize the
    shorter side to 256, centre crop 227. ImageNet mean/std by default.
digits
    scikit-learn's 8x8 digits: optional (bilinear) upsampling to ``crop_size``; for
    training a small random affine (10 degrees, 10% translation, scale 0.9-1.1, black
    fill = the digits' background); mean/std 0.5 map [0, 1] to [-1, 1].
omniglot
    Omniglot characters resized to 28x28 greyscale; for training a small random affine
    (10 degrees, 10% translation, scale 0.9-1.1, white fill = the page background); test:
    resize only. Mean/std 0.5.

For ``digits`` and ``omniglot`` the image is resized to ``resize_size`` and then centre
cropped to ``crop_size``; either one alone sets both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet statistics of the luminance channel, for one-channel trunks on the standard preset
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)
SCALE_RANGE = (0.16, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)


class Preprocess:
    """A transform pipeline with the PIL mode it expects its images in."""

    def __init__(self, name: str, pipeline: Callable[[Any], Any], image_mode: str) -> None:
        self.name = name
        self.pipeline = pipeline
        self.image_mode = image_mode

    def __call__(self, image: Any) -> Any:
        return self.pipeline(image)

    def __repr__(self) -> str:
        return f"Preprocess({self.name!r}, image_mode={self.image_mode!r}, {self.pipeline!r})"


def names() -> list[str]:
    """Names of the presets."""
    return sorted(_PRESETS)


def create(preset: str, *, train: bool, crop_size: int | None = None,
           resize_size: int | None = None, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, in_channels: int = 3) -> Preprocess:
    """The ``preset`` pipeline for training (augmented) or evaluation (deterministic)."""
    if preset not in _PRESETS:
        raise KeyError(f"unknown transform preset {preset!r}; valid presets: "
                       f"{', '.join(names())}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    for name, value in (("crop_size", crop_size), ("resize_size", resize_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    builder, default_mean, default_std = _PRESETS[preset]
    if mean is None and std is None and preset == "standard" and in_channels == 1:
        default_mean, default_std = IMAGENET_GREY_MEAN, IMAGENET_GREY_STD
    mean = _channel_values("mean", default_mean if mean is None else mean, in_channels)
    std = _channel_values("std", default_std if std is None else std, in_channels)
    if any(value <= 0 for value in std):
        raise ValueError(f"std values must be positive, got {std}")
    image_mode = "L" if in_channels == 1 else "RGB"
    steps = builder(train=train, crop_size=crop_size, resize_size=resize_size,
                    image_mode=image_mode)
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return Preprocess(preset, T.Compose(steps), image_mode)


def _standard(*, train: bool, crop_size: int | None, resize_size: int | None,
              image_mode: str) -> list:
    crop = 227 if crop_size is None else crop_size
    resize = 256 if resize_size is None else resize_size
    if crop > resize:
        raise ValueError(f"standard preset: crop_size {crop} is larger than resize_size {resize}")
    if train:
        return [T.Resize(resize), T.RandomResizedCrop(crop, scale=SCALE_RANGE, ratio=RATIO_RANGE),
                T.RandomHorizontalFlip()]
    return [T.Resize(resize), T.CenterCrop(crop)]


def _small_image(default_size: int, fill: int) -> Callable[..., list]:
    def build(*, train: bool, crop_size: int | None, resize_size: int | None,
              image_mode: str) -> list:
        resize = resize_size or crop_size or default_size
        crop = crop_size or resize
        if crop > resize:
            raise ValueError(f"crop_size {crop} is larger than resize_size {resize}")
        steps: list = [T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR)]
        if train:
            fill_value = fill if image_mode == "L" else (fill, fill, fill)
            steps.append(T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                                        interpolation=T.InterpolationMode.BILINEAR,
                                        fill=fill_value))
        if crop != resize:
            steps.append(T.CenterCrop(crop))
        return steps

    return build


def _channel_values(name: str, values: Sequence[float], in_channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * in_channels
    if len(values) != in_channels:
        raise ValueError(f"{name} has {len(values)} values, expected 1 or {in_channels} "
                         f"(in_channels)")
    return values


_PRESETS: dict[str, tuple[Callable[..., list], tuple[float, ...], tuple[float, ...]]] = {
    "standard": (_standard, IMAGENET_MEAN, IMAGENET_STD),
    "digits": (_small_image(8, fill=0), (0.5,), (0.5,)),
    "omniglot": (_small_image(28, fill=255), (0.5,), (0.5,)),
}
