"""Preprocessing: the normalisation formula, grayscale derivation and input validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fairdml.models.preprocessing import Preprocessing


def test_rgb_unit_range_normalisation() -> None:
    p = Preprocessing(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = torch.tensor([[[[1.0]], [[0.5]], [[1.0]]]])
    assert p.normalize(x).flatten().tolist() == [1.0, 1.0, 0.5]
    assert p.normalize(x[0]).shape == (3, 1, 1)  # a single image works too


def test_bgr_255_normalisation_reorders_then_scales() -> None:
    p = Preprocessing(mean=(10.0, 20.0, 30.0), std=(1.0, 1.0, 5.0), color_order="BGR",
                      input_range=255.0)
    rgb = torch.tensor([[[[0.0]], [[0.5]], [[1.0]]]])  # R=0, G=0.5, B=1
    # BGR order: B=255, G=127.5, R=0
    assert p.normalize(rgb).flatten().tolist() == [255 - 10.0, 127.5 - 20.0, (0 - 30.0) / 5]


def test_grayscale_version_averages_the_channel_statistics() -> None:
    p = Preprocessing(mean=(0.3, 0.6, 0.9), std=(0.1, 0.2, 0.3), crop_size=224)
    grey = p.with_channels(1)
    assert grey.in_channels == 1
    assert grey.mean == pytest.approx((0.6,)) and grey.std == pytest.approx((0.2,))
    assert grey.crop_size == 224 and p.with_channels(3) is p


def test_is_frozen() -> None:
    p = Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.crop_size = 256  # type: ignore[misc]


@pytest.mark.parametrize(("options", "message"), [
    ({"mean": (0.0, 0.0), "std": (1.0,) * 3}, "mean has 2 values"),
    ({"mean": (0.0,) * 3, "std": (1.0, 0.0, 1.0)}, "std must be positive"),
    ({"mean": (0.0,) * 3, "std": (1.0,) * 3, "color_order": "rgb"}, "color_order must be"),
    ({"mean": (0.0,) * 3, "std": (1.0,) * 3, "input_range": 100.0}, "input_range must be"),
    ({"mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_size": 0}, "crop_size must be"),
    ({"mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_size": 300}, "larger than resize_size"),
    ({"mean": (0.0,), "std": (1.0,), "in_channels": 0}, "in_channels must be"),
])
def test_invalid_values_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessing(**options)


def test_wrong_image_shape_is_named() -> None:
    p = Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        p.normalize(torch.zeros(2, 1, 4, 4))


def test_plain_normalize_flag_and_pickling() -> None:
    import pickle

    import torchvision.transforms as T

    rgb = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = torch.rand(3, 4, 4)
    assert rgb.is_plain_normalize
    torch.testing.assert_close(rgb.normalize(x), T.Normalize(rgb.mean, rgb.std)(x))
    bgr = Preprocessing(mean=(104.0, 117.0, 128.0), std=(1.0,) * 3, color_order="BGR",
                        input_range=255.0)
    assert not bgr.is_plain_normalize
    assert not torch.allclose(bgr.normalize(x), T.Normalize(bgr.mean, bgr.std)(x))
    restored = pickle.loads(pickle.dumps(bgr.normalize))
    torch.testing.assert_close(restored(x), bgr.normalize(x))
