"""Every trunk builds with its declared output; frozen BatchNorm; registry and fallback."""

from __future__ import annotations

import warnings

import pytest
import torch

from fairdml.models import (
    PretrainedWeightsUnavailable,
    Trunk,
    create_trunk,
    register_trunk,
    trunk_names,
)
from fairdml.models.preprocessing import Preprocessing
from fairdml.models.trunks import TRUNKS

CNN_TRUNKS = {  # name: (feature_dim, small input size that passes every stride)
    "small_cnn": (64, 28),
    "resnet18": (512, 64),
    "resnet50": (2048, 64),
    "googlenet": (1024, 64),
    "bninception": (1024, 64),
}
VIT_TRUNKS = {  # name: number of prefix tokens (CLS, DeiT's distillation token)
    "vit_s16": 1,
    "deit_s": 1,
    "deit_s_distilled": 2,
    "dino_vit_s16": 1,
}
TIMM_ALIASES = {
    "vit_small_patch16_224": "vit_s16",
    "deit_small_patch16_224": "deit_s",
    "deit_small_distilled_patch16_224": "deit_s_distilled",
    "vit_small_patch16_224.dino": "dino_vit_s16",
}


def test_registry_lists_every_trunk() -> None:
    assert set(trunk_names()) == set(CNN_TRUNKS) | set(VIT_TRUNKS) | set(TIMM_ALIASES)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Offline, with empty torch.hub and Hugging Face caches."""
    monkeypatch.setenv("FAIRDML_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))


def build_recording_warnings(name: str, **options) -> tuple[Trunk, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trunk = create_trunk(name, **options)
    relevant = [w for w in caught if issubclass(w.category, PretrainedWeightsUnavailable)]
    # attributed to the caller of create_trunk, not to fairdml's internals
    assert all(w.filename == __file__ for w in relevant), [w.filename for w in relevant]
    return trunk, [str(w.message) for w in relevant]


@pytest.mark.parametrize("name", sorted(CNN_TRUNKS))
def test_cnn_trunk_builds_and_gives_the_declared_map(name: str, no_network: None) -> None:
    """pretrained=True offline: random weights, one warning (small_cnn has no weights)."""
    feature_dim, size = CNN_TRUNKS[name]
    trunk, messages = build_recording_warnings(name, pretrained=True)
    assert len(messages) == (0 if name == "small_cnn" else 1)
    assert all("RANDOMLY INITIALISED" in m and repr(name) in m for m in messages)
    assert trunk.feature_dim == feature_dim and trunk.output_format == "map"
    assert isinstance(trunk.preprocessing, Preprocessing)
    with torch.no_grad():
        out = trunk.eval()(torch.randn(2, 3, size, size))
    assert out.dim() == 4 and out.shape[:2] == (2, feature_dim)


VIT_PREPROCESSING = {"vit_s16": ((0.5,) * 3, (0.5,) * 3)}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("name", sorted(VIT_TRUNKS))
def test_vit_trunk_builds_and_gives_the_declared_tokens(name: str, no_network: None) -> None:
    trunk, messages = build_recording_warnings(name, pretrained=True)
    assert len(messages) == 1 and "RANDOMLY INITIALISED" in messages[0]
    assert trunk.feature_dim == 384 and trunk.output_format == "tokens"
    assert trunk.num_prefix_tokens == VIT_TRUNKS[name]
    p = trunk.preprocessing
    mean, std = VIT_PREPROCESSING.get(name, IMAGENET)
    assert (p.mean, p.std, p.color_order, p.crop_size, p.resize_size) == (
        pytest.approx(mean), pytest.approx(std), "RGB", 224, 256)
    with torch.no_grad():
        out = trunk.eval()(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, VIT_TRUNKS[name] + 14 * 14, 384)


def test_timm_names_are_aliases_of_the_friendly_names() -> None:
    for timm_name, name in TIMM_ALIASES.items():
        assert TRUNKS.get(timm_name) is TRUNKS.get(name)


@pytest.mark.parametrize(("name", "mean", "std", "crop"), [
    ("resnet50", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
    ("googlenet", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224),  # its weights expect (x - 0.5) / 0.5
])
def test_declared_preprocessing(name: str, mean: tuple, std: tuple, crop: int) -> None:
    p = create_trunk(name, pretrained=False).preprocessing
    assert (p.mean, p.std, p.color_order, p.input_range, p.crop_size, p.resize_size) == (
        pytest.approx(mean), pytest.approx(std), "RGB", 1.0, crop, 256)


@pytest.mark.parametrize(("name", "size"), [("small_cnn", 8), ("small_cnn", 28),
                                            ("resnet18", 64)])
def test_grayscale_input(name: str, size: int) -> None:
    trunk = create_trunk(name, pretrained=False, in_channels=1).eval()
    assert trunk.preprocessing.in_channels == 1 and len(trunk.preprocessing.mean) == 1
    with torch.no_grad():
        out = trunk(torch.randn(2, 1, size, size))
    assert out.shape[:2] == (2, trunk.feature_dim)


def test_small_cnn_skips_pooling_on_a_one_pixel_map() -> None:
    trunk = create_trunk("small_cnn", pretrained=False).eval()
    with torch.no_grad():
        assert trunk(torch.randn(3, 3, 8, 8)).shape == (3, 64, 1, 1)
        assert trunk(torch.randn(3, 3, 28, 28)).shape == (3, 64, 1, 1)
        assert trunk(torch.randn(3, 3, 32, 32)).shape == (3, 64, 2, 2)


def _train_steps(trunk: Trunk, steps: int = 3) -> None:
    optimizer = torch.optim.SGD([p for p in trunk.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        trunk(torch.randn(8, 3, 16, 16) * 3 + 1).pow(2).mean().backward()
        optimizer.step()


def _bn_state(trunk: Trunk) -> list[torch.Tensor]:
    return [t.clone() for layer in trunk.batchnorm_layers()
            for t in (layer.running_mean, layer.running_var, layer.weight, layer.bias)]


def test_frozen_batchnorm_keeps_running_statistics_while_training() -> None:
    trunk = create_trunk("small_cnn", pretrained=False, freeze_batchnorm=True)
    trunk.train()
    assert trunk.training
    assert all(not layer.training for layer in trunk.batchnorm_layers())
    before = _bn_state(trunk)
    _train_steps(trunk)
    after = _bn_state(trunk)
    for layer_index in range(len(trunk.batchnorm_layers())):
        mean_before, var_before, weight_before = before[4 * layer_index: 4 * layer_index + 3]
        mean_after, var_after, weight_after = after[4 * layer_index: 4 * layer_index + 3]
        assert torch.equal(mean_before, mean_after) and torch.equal(var_before, var_after)
    # the affine parameters still learn
    assert any(not torch.equal(b, a) for b, a in zip(before[2::4], after[2::4]))


def test_unfrozen_batchnorm_statistics_do_change() -> None:
    trunk = create_trunk("small_cnn", pretrained=False).train()
    before = _bn_state(trunk)
    _train_steps(trunk)
    assert not torch.equal(before[0], _bn_state(trunk)[0])


def test_frozen_batchnorm_affine_freezes_weight_and_bias() -> None:
    trunk = create_trunk("small_cnn", pretrained=False, freeze_batchnorm=True,
                         freeze_batchnorm_affine=True).train()
    layers = trunk.batchnorm_layers()
    assert all(not p.requires_grad for layer in layers for p in (layer.weight, layer.bias))
    conv_before = trunk.blocks[0].conv.weight.clone()
    before = _bn_state(trunk)
    _train_steps(trunk)
    assert all(torch.equal(b, a) for b, a in zip(before, _bn_state(trunk)))
    assert not torch.equal(conv_before, trunk.blocks[0].conv.weight)


def test_frozen_batchnorm_survives_a_parent_train_call() -> None:
    trunk = create_trunk("resnet18", pretrained=False, freeze_batchnorm=True)
    parent = torch.nn.Sequential(trunk)
    parent.eval()
    parent.train()
    assert trunk.training
    assert trunk.batchnorm_layers() and all(not m.training for m in trunk.batchnorm_layers())


def test_freezing_affine_without_statistics_is_an_error() -> None:
    with pytest.raises(ValueError, match="requires freeze_batchnorm=True"):
        create_trunk("small_cnn", pretrained=False, freeze_batchnorm_affine=True)


def test_unknown_trunk_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match="unknown trunk 'resnet51'.*bninception.*resnet50"):
        create_trunk("resnet51")


@pytest.mark.parametrize("channels", [0, 2, 4, "3"])
def test_unsupported_in_channels(channels: object) -> None:
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        create_trunk("small_cnn", in_channels=channels)  # type: ignore[arg-type]


def test_pretrained_false_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_trunk("resnet18", pretrained=False)
        create_trunk("small_cnn", pretrained=True)  # no published weights exist: documented


def test_user_registered_trunk() -> None:
    @register_trunk("test_tiny_trunk")
    class Tiny(Trunk):
        feature_dim = 5

        def __init__(self, *, pretrained: bool, in_channels: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, 5, 1)
            self.preprocessing = Preprocessing(mean=(0.0,) * in_channels,
                                               std=(1.0,) * in_channels,
                                               in_channels=in_channels)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.conv(images)

    try:
        trunk = create_trunk("test_tiny_trunk")
        assert trunk(torch.zeros(1, 3, 2, 2)).shape == (1, 5, 2, 2)
        assert "test_tiny_trunk" in trunk_names()
    finally:
        TRUNKS._entries.pop("test_tiny_trunk")


def test_factory_returning_a_plain_module_is_refused() -> None:
    register_trunk("test_not_a_trunk")(lambda **_: torch.nn.Linear(2, 2))
    try:
        with pytest.raises(TypeError, match="expected a fairdml.models.Trunk"):
            create_trunk("test_not_a_trunk")
    finally:
        TRUNKS._entries.pop("test_not_a_trunk")
