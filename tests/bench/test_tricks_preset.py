"""configs/bench/tricks_omniglot.yaml: the seed's tricks ablation on Omniglot.

The preset is an ablation only if every variant is the base with exactly one switch changed;
these tests load it and compare each variant's full run configuration with the base's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from fairdml.bench.config import BenchConfig, method_run_config, split_search_space
from fairdml.config import RunConfig, load_config, to_dict

PRESET = "bench/tricks_omniglot"

# method -> the run-config keys it changes relative to "base", with their values
INTENDED = {
    "base": {},
    "pool_avg+max": {"model.pooling": "avg+max"},
    "embedding_512": {"model.embedding_dim": 512},
    "layer_norm": {"model.layer_norm": True},
    "beta_norm_0.5": {"model.normalization": "beta", "model.beta": 0.5},
    "flip_average": {"eval.flip_average": True},
    "rerank_k_reciprocal": {"eval.rerank": "k_reciprocal"},
    "rerank_query_expansion": {"eval.rerank": "query_expansion"},
}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("params", "miner_params"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.fixture(scope="module")
def bench() -> BenchConfig:
    return load_config(PRESET, cls=BenchConfig)


def run_config(bench: BenchConfig, name: str) -> RunConfig:
    (method,) = [m for m in bench.methods if m.name == name]
    ranges, fixed = split_search_space(method)
    assert not ranges, f"{name}: the ablation uses fixed hyper-parameters, no search"
    return method_run_config(bench, method, fixed)


def test_preset_has_exactly_the_intended_methods(bench: BenchConfig) -> None:
    assert [m.name for m in bench.methods] == list(INTENDED)
    assert bench.protocol.repeats >= 3
    assert bench.protocol.num_folds >= 2
    assert bench.protocol.trials == 1


@pytest.mark.parametrize("name", list(INTENDED))
def test_variant_differs_from_base_only_in_intended_keys(bench: BenchConfig, name: str) -> None:
    base = flatten(to_dict(run_config(bench, "base")))
    variant = flatten(to_dict(run_config(bench, name)))
    assert set(base) == set(variant)
    changed = {key: variant[key] for key in base if variant[key] != base[key]}
    assert changed == INTENDED[name]


def test_base_is_multi_similarity_with_the_paper_parameters(bench: BenchConfig) -> None:
    config = run_config(bench, "base")
    assert (config.loss.name, config.loss.miner) == ("multi_similarity", "multi_similarity")
    assert config.loss.params == {"alpha": 2.0, "beta": 50.0, "base": 0.5}
    assert config.loss.miner_params == {"epsilon": 0.1}
    assert (config.model.pooling, config.model.embedding_dim) == ("avg", 128)
    assert config.model.layer_norm is False and config.model.normalization == "l2"
    assert config.eval.flip_average is False and config.eval.rerank is None


def test_max_pooling_left_out_because_it_equals_avg_on_this_trunk(bench: BenchConfig) -> None:
    """The preset leaves ``model.pooling=max`` out: conv-4 on 28x28 ends on a 1x1 map, where
    max and average pooling are the same function (same weights, same outputs)."""
    from fairdml.train.trainer import build_model

    base = run_config(bench, "base")
    as_max = dataclasses.replace(base, model=dataclasses.replace(base.model, pooling="max"))
    torch.manual_seed(0)
    avg_model = build_model(base).eval()
    torch.manual_seed(0)
    max_model = build_model(as_max).eval()
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert avg_model.trunk(images).shape[-2:] == (1, 1)
        assert torch.equal(avg_model(images), max_model(images))
        as_sum = dataclasses.replace(base, model=dataclasses.replace(base.model,
                                                                     pooling="avg+max"))
        torch.manual_seed(0)
        sum_model = build_model(as_sum).eval()
        assert not torch.allclose(avg_model(images), sum_model(images))
