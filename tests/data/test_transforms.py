"""Transform presets: output shapes, normalisation, augmentation, image modes and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fairdml.data import transforms


def _image(width=320, height=280, mode="RGB"):
    rng = np.random.default_rng(0)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def test_names():
    assert transforms.names() == ["digits", "omniglot", "standard"]
    with pytest.raises(KeyError, match="valid presets: digits, omniglot, standard"):
        transforms.create("imagenet", train=True)


def test_standard_test_is_resize_256_centre_crop_227_imagenet_normalised():
    preprocess = transforms.create("standard", train=False)
    assert preprocess.image_mode == "RGB"
    image = _image()
    out = preprocess(image)
    assert out.shape == (3, 227, 227) and out.dtype == torch.float32
    # same as doing it by hand: shorter side 256 (280 -> 256, 320 -> 292), centre 227
    resized = image.resize((292, 256), Image.BILINEAR)
    assert torch.equal(out, preprocess(image))  # deterministic
    left, top = (292 - 227) // 2, (256 - 227) // 2
    crop = np.asarray(resized)[top:top + 227, left:left + 227].astype(np.float32) / 255
    mean = np.array(transforms.IMAGENET_MEAN, dtype=np.float32)
    std = np.array(transforms.IMAGENET_STD, dtype=np.float32)
    expected = ((crop - mean) / std).transpose(2, 0, 1)
    assert np.abs(out.numpy() - expected).mean() < 0.05  # resampling kernels differ slightly


def test_standard_train_is_random_with_trunk_parameters():
    preprocess = transforms.create("standard", train=True, crop_size=224, resize_size=256,
                                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    image = _image()
    torch.manual_seed(0)
    first, second = preprocess(image), preprocess(image)
    assert first.shape == second.shape == (3, 224, 224)
    assert not torch.equal(first, second)
    assert first.min() >= -2.0 - 1e-6 and first.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25


def test_one_channel_trunks_load_luminance():
    preprocess = transforms.create("standard", train=False, in_channels=1)
    assert preprocess.image_mode == "L"
    assert preprocess(_image(mode="L")).shape == (1, 227, 227)


def test_digits_preset_normalises_and_upsamples():
    digit = Image.fromarray(np.linspace(0, 255, 64).reshape(8, 8).astype(np.uint8), mode="L")
    out = transforms.create("digits", train=False, in_channels=1)(digit)
    assert out.shape == (1, 8, 8)
    np.testing.assert_allclose(out[0].numpy(), np.asarray(digit) / 255 * 2 - 1, atol=1e-6)
    up = transforms.create("digits", train=True, crop_size=32)
    assert up(digit.convert("RGB")).shape == (3, 32, 32)


def test_omniglot_preset_resizes_and_augments_with_white_fill():
    page = Image.new("L", (105, 105), color=255)
    test = transforms.create("omniglot", train=False, in_channels=1)
    assert test(page).shape == (1, 28, 28)
    train = transforms.create("omniglot", train=True, in_channels=1)
    torch.manual_seed(1)
    out = train(page)
    assert out.shape == (1, 28, 28)
    assert torch.allclose(out, torch.ones_like(out))  # the fill is the white background
    stroke = Image.new("L", (105, 105), color=255)
    stroke.paste(0, (40, 10, 60, 95))
    outs = [train(stroke) for _ in range(4)]
    assert any(not torch.equal(outs[0], other) for other in outs[1:])


def test_transform_errors_name_the_parameter():
    with pytest.raises(ValueError, match="mean has 2 values"):
        transforms.create("standard", train=True, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="std values must be positive"):
        transforms.create("digits", train=True, std=(0.0,))
    with pytest.raises(ValueError, match="larger than resize_size"):
        transforms.create("standard", train=False, crop_size=300, resize_size=256)
    with pytest.raises(ValueError, match="in_channels"):
        transforms.create("digits", train=False, in_channels=2)
    with pytest.raises(ValueError, match="crop_size"):
        transforms.create("omniglot", train=False, crop_size=0)
