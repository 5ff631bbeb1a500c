"""Every shipped run preset loads, and its model and loss build (random weights)."""

import warnings

import pytest

from fairdml.config import CONFIG_DIRS, load_config
from fairdml.train.trainer import build_loss, build_model

PRESETS = sorted(p.relative_to(CONFIG_DIRS[0]).with_suffix("").as_posix()
                 for p in CONFIG_DIRS[0].rglob("*.yaml") if "bench" not in p.parts)


def test_presets_are_found():
    assert {"demo", "omniglot", "recipes/proxy_anchor_cub200", "recipes/hyp_vit_sop",
            "mlrc/cub200"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_model_and_loss(preset):
    config = load_config(preset, ["model.pretrained=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config)
    loss = build_loss(config, num_classes=10, embedding_dim=model.embedding_dim)
    assert model.embedding_dim == (config.model.embedding_dim or model.embedding_dim)
    assert callable(loss)
