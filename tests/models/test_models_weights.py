"""Local weight files: exact round trip, clear mismatch errors, documented adaptations."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from fairdml.models import PretrainedWeightsUnavailable, WeightsMismatchError, create_trunk
from fairdml.models.weights import read_state_dict


def saved(tmp_path: Path, state: dict, name: str = "weights.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def randomized(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's state with every float tensor (BatchNorm statistics too) randomised."""
    torch.manual_seed(1)
    return {key: (torch.rand_like(value) + 0.5 if value.is_floating_point() else value)
            for key, value in trunk.state_dict().items()}


def test_local_weights_round_trip(tmp_path: Path) -> None:
    source = create_trunk("small_cnn", pretrained=False)
    state = randomized(source)
    trunk = create_trunk("small_cnn", weights=saved(tmp_path, state))
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_torchvision_checkpoint_with_classifier_loads(tmp_path: Path) -> None:
    """A torchvision file keeps its ImageNet classifier (fc.*); the trunk drops it."""
    state = randomized(create_trunk("resnet18", pretrained=False))
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    trunk = create_trunk("resnet18", weights=saved(tmp_path, state))
    assert torch.equal(trunk.conv1.weight, state["conv1.weight"])
    assert torch.equal(trunk.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_containers_and_dataparallel_prefix_are_unwrapped(tmp_path: Path) -> None:
    state = randomized(create_trunk("small_cnn", pretrained=False))
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    loaded = read_state_dict(saved(tmp_path, wrapped))
    assert loaded.keys() == state.keys()


def test_mismatch_error_names_missing_unexpected_and_shape_differences(tmp_path: Path) -> None:
    state = dict(create_trunk("small_cnn", pretrained=False).state_dict())
    del state["blocks.3.bn.running_mean"]
    state["blocks.9.conv.weight"] = torch.zeros(1)
    state["blocks.0.conv.weight"] = torch.zeros(32, 3, 3, 3)
    path = saved(tmp_path, state, "bad.pth")
    with pytest.raises(WeightsMismatchError) as error:
        create_trunk("small_cnn", weights=path)
    message = str(error.value)
    assert "bad.pth" in message
    assert "missing keys (1): blocks.3.bn.running_mean" in message
    assert "unexpected keys (1): blocks.9.conv.weight" in message
    assert ("shape differences (1): blocks.0.conv.weight: file (32, 3, 3, 3) vs model "
            "(64, 3, 3, 3)") in message


def test_mismatch_error_lists_the_first_few_and_counts_the_rest(tmp_path: Path) -> None:
    """resnet18 weights are not a resnet50: the message stays short but complete in counts."""
    state = create_trunk("resnet18", pretrained=False).state_dict()
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(\d+\): .*more\)") as error:
        create_trunk("resnet50", weights=saved(tmp_path, state))
    assert "layer1.0.conv3.weight" in str(error.value) or "more)" in str(error.value)
    assert "shape differences" in str(error.value)


def test_grayscale_trunk_sums_the_rgb_filters_of_a_colour_file(tmp_path: Path) -> None:
    state = randomized(create_trunk("small_cnn", pretrained=False))
    trunk = create_trunk("small_cnn", weights=saved(tmp_path, state), in_channels=1)
    expected = state["blocks.0.conv.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(trunk.blocks[0].conv.weight, expected)
    # a grey image replicated to RGB gives the colour trunk's features
    colour = create_trunk("small_cnn", weights=saved(tmp_path, state)).eval()
    grey = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(trunk.eval()(grey), colour(grey.expand(-1, 3, -1, -1)))


def test_missing_file_and_non_state_dict_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_trunk("small_cnn", weights=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        create_trunk("small_cnn", weights=saved(tmp_path, {"lr": torch.tensor(1.0),
                                                            "note": "x"}))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not be read as a torch state dict"):
        create_trunk("small_cnn", weights=garbage)


def test_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = randomized(create_trunk("small_cnn", pretrained=False))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    trunk = create_trunk("small_cnn", weights=path)
    assert torch.equal(trunk.blocks[2].bn.running_var, state["blocks.2.bn.running_var"])


def test_timm_checkpoint_with_head_loads_into_the_vit_trunk(tmp_path: Path) -> None:
    """A timm / official DeiT checkpoint ({"model": ...}, with its classifier head)."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    path = saved(tmp_path, {"model": reference.state_dict()})
    trunk = create_trunk("deit_s", weights=path).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(trunk(images), reference.forward_features(images))
    # and a file saved from the fairdml trunk itself
    again = create_trunk("deit_s", weights=saved(tmp_path, trunk.state_dict(), "own.pth"))
    assert torch.equal(again.model.cls_token, reference.cls_token)


def test_published_torchvision_weights_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrained=True with a reachable (here: stubbed) download loads the published file."""
    import fairdml.models.torchvision_trunks as torchvision_trunks

    published = randomized(create_trunk("resnet18", pretrained=False))
    published["fc.weight"], published["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    urls = []

    def fetch(url: str) -> dict[str, torch.Tensor]:
        urls.append(url)
        return published

    monkeypatch.setattr(torchvision_trunks, "fetch_state_dict", fetch)
    trunk = create_trunk("resnet18", pretrained=True)
    assert urls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert torch.equal(trunk.layer2[0].downsample[1].running_mean,
                       published["layer2.0.downsample.1.running_mean"])


def test_corrupt_torch_hub_cache_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, checkpoints / "resnet18-f37072fd.pth")
    with pytest.warns(PretrainedWeightsUnavailable, match="resnet18.*RANDOMLY INITIALISED"):
        create_trunk("resnet18", pretrained=True)


def test_timm_weights_from_the_local_hub_cache(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """Offline with the weights in the Hugging Face cache: timm loads them, no warning."""
    import timm
    from safetensors.torch import save_file

    import fairdml.models.vit as vit

    torch.manual_seed(3)
    reference = timm.create_model("vit_small_patch16_224.dino", pretrained=False).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    monkeypatch.setenv("FAIRDML_OFFLINE", "1")
    monkeypatch.setattr(vit, "_cached_hub_file", lambda name: str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedWeightsUnavailable)
        trunk = create_trunk("dino_vit_s16", pretrained=True).eval()
    assert torch.equal(trunk.model.pos_embed, reference.pos_embed)
