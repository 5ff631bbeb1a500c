"""BN-Inception: the architecture of the Cadene port and its published-weights conventions.

The expected keys, shapes and parameter count below are facts of the public
``pretrainedmodels`` BN-Inception (``bninception.py``; 11,295,240 parameters with its
1000-way classifier of 1,025,000); an offline comparison against that module gave
bit-identical feature maps (see the module docstring for the file format).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fairdml.models import create_trunk
from fairdml.models.bninception import BNInception, from_cadene_key, to_cadene_key

CADENE_SHAPES = {  # key in the published file: shape
    "conv1_7x7_s2.weight": (64, 3, 7, 7),
    "conv1_7x7_s2_bn.running_mean": (64,),
    "conv2_3x3.weight": (192, 64, 3, 3),
    "inception_3a_1x1.weight": (64, 192, 1, 1),
    "inception_3a_pool_proj.weight": (32, 192, 1, 1),
    "inception_3c_3x3.weight": (160, 128, 3, 3),
    "inception_3c_double_3x3_2_bn.running_var": (96,),
    "inception_4a_1x1.weight": (224, 576, 1, 1),
    "inception_4d_double_3x3_reduce.weight": (160, 608, 1, 1),
    "inception_4e_double_3x3_2.weight": (256, 256, 3, 3),
    "inception_5a_1x1.weight": (352, 1056, 1, 1),
    "inception_5b_pool_proj.weight": (128, 1024, 1, 1),
    "inception_5b_double_3x3_2_bn.bias": (224,),
}
TRUNK_PARAMETERS = 11_295_240 - 1_025_000


@pytest.fixture(scope="module")
def trunk() -> BNInception:
    return create_trunk("bninception", pretrained=False).eval()


def cadene_file(trunk: BNInception, tmp_path: Path, *, old_format: bool) -> Path:
    """A file in the published format: flat keys, classifier, optionally the original
    port's (1, C) BatchNorm tensors and no num_batches_tracked counters."""
    torch.manual_seed(0)
    state = {}
    for key, value in trunk.state_dict().items():
        if key.endswith("num_batches_tracked") and old_format:
            continue
        value = torch.rand_like(value) + 0.5 if value.is_floating_point() else value
        if old_format and ".bn." in key and value.dim() == 1:
            value = value.unsqueeze(0)
        state[to_cadene_key(key)] = value
    state["last_linear.weight"] = torch.zeros(1000, 1024)
    state["last_linear.bias"] = torch.zeros(1000)
    path = tmp_path / "bn_inception.pth"
    torch.save(state, path)
    return path


def test_architecture_matches_the_published_port(trunk: BNInception) -> None:
    assert sum(p.numel() for p in trunk.parameters()) == TRUNK_PARAMETERS
    exported = {to_cadene_key(k): tuple(v.shape) for k, v in trunk.state_dict().items()}
    for key, shape in CADENE_SHAPES.items():
        assert exported[key] == shape, key
    assert len(exported) == 485 - 2  # the port's keys minus its classifier


def test_key_mapping_examples_and_round_trip(trunk: BNInception) -> None:
    assert from_cadene_key("conv1_7x7_s2.weight") == "conv1_7x7_s2.conv.weight"
    assert from_cadene_key("conv1_7x7_s2_bn.running_mean") == "conv1_7x7_s2.bn.running_mean"
    assert (from_cadene_key("inception_3a_double_3x3_1.weight")
            == "inception_3a.conv_double_3x3_1.conv.weight")
    assert from_cadene_key("inception_3a_pool_proj_bn.bias") == "inception_3a.pool_proj.bn.bias"
    for key in trunk.state_dict():
        assert from_cadene_key(to_cadene_key(key)) == key


@pytest.mark.parametrize("old_format", [False, True])
def test_published_format_file_loads_exactly(trunk: BNInception, tmp_path: Path,
                                             old_format: bool) -> None:
    path = cadene_file(trunk, tmp_path, old_format=old_format)
    loaded = create_trunk("bninception", weights=path).eval()
    published = torch.load(path, weights_only=True)
    for key, value in loaded.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, published[to_cadene_key(key)].reshape(
                value.shape), rtol=0, atol=0)


def test_feature_map_sizes(trunk: BNInception) -> None:
    with torch.no_grad():
        assert trunk(torch.randn(1, 3, 227, 227)).shape == (1, 1024, 7, 7)
        assert trunk(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


def test_preprocessing_is_bgr_0_255_with_mean_subtraction(trunk: BNInception) -> None:
    p = trunk.preprocessing
    assert (p.color_order, p.input_range, p.mean, p.std, p.crop_size, p.resize_size) == (
        "BGR", 255.0, (104.0, 117.0, 128.0), (1.0, 1.0, 1.0), 227, 256)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0  # pure red in RGB [0, 1]
    assert p.normalize(red).flatten().tolist() == [0 - 104.0, 0 - 117.0, 255 - 128.0]
