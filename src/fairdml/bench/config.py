"""Benchmark presets: a base run, the protocol, and the methods with their search spaces.

A preset (``configs/bench/*.yaml``)::

    name: demo
    run: {data: ..., model: ..., optim: ..., train: ..., eval: ...}   # a RunConfig
    protocol: {num_folds: 2, trials: 4, repeats: 3, sampler: tpe, seed: 0}
    methods:
      - name: triplet
        loss: triplet
        miner: semihard
        search:
          loss.params.margin: {low: 0.01, high: 0.5, scale: linear}
          optim.lr: {low: 1.0e-4, high: 1.0e-2, scale: log}
          loss.params.soft: false          # a fixed value

Search keys are dotted config keys of the run (``loss.params.*`` and ``loss.miner_params.*``
are free-form). A range is ``{low, high, scale: log|linear, type: float|int}``; a choice is
``{choices: [...]}``; anything else is a fixed value.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fairdml.config import ConfigError, RunConfig, apply_overrides, from_dict, to_dict


@dataclasses.dataclass
class ProtocolConfig:
    """The reality-check protocol (Musgrave et al. 2020)."""

    num_folds: int = 4  # class-disjoint folds of the training classes
    trials: int = 50  # hyper-parameter search trials per method
    repeats: int = 5  # retrainings of the best setting, each with new seeds
    sampler: str = "tpe"  # tpe | random
    seed: int = 0
    objective: str = "map@r"  # mean validation metric over the folds
    storage: str | None = None  # optuna RDB URL; None: the results SQLite file
    baselines: bool = True
    confidence: float = 0.95


@dataclasses.dataclass
class MethodConfig:
    """One method: a loss (+ miner), fixed parameters and a search space."""

    name: str
    loss: str
    miner: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    miner_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    overrides: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class BenchConfig:
    """A complete benchmark."""

    name: str = "bench"
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    protocol: ProtocolConfig = dataclasses.field(default_factory=ProtocolConfig)
    methods: list[MethodConfig] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        validate(self)


@dataclasses.dataclass(frozen=True)
class SearchRange:
    """One searched hyper-parameter."""

    key: str
    low: float | None = None
    high: float | None = None
    scale: str = "linear"
    type: str = "float"
    choices: tuple[Any, ...] | None = None


def split_search_space(method: MethodConfig) -> tuple[list[SearchRange], dict[str, Any]]:
    """The searched ranges and the fixed values of a method's search space."""
    ranges, fixed = [], {}
    for key, spec in method.search.items():
        where = f"method {method.name!r}, search key {key!r}"
        if isinstance(spec, dict) and "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices must be a non-empty list")
            ranges.append(SearchRange(key=key, choices=tuple(choices), type="categorical"))
        elif isinstance(spec, dict):
            unknown = sorted(set(spec) - {"low", "high", "scale", "type"})
            if unknown or "low" not in spec or "high" not in spec:
                raise ConfigError(f"{where}: a range needs low and high (and optionally scale "
                                  f"log|linear, type float|int); got keys {sorted(spec)}")
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: low and high must be numbers, got "
                                  f"{spec['low']!r} and {spec['high']!r}") from None
            scale, kind = spec.get("scale", "linear"), spec.get("type", "float")
            if scale not in ("log", "linear") or kind not in ("float", "int"):
                raise ConfigError(f"{where}: scale must be log or linear and type float or int, "
                                  f"got {scale!r} and {kind!r}")
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ConfigError(f"{where}: empty or inverted range [{low}, {high}]; "
                                  "low must be smaller than high")
            if scale == "log" and low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
            ranges.append(SearchRange(key=key, low=low, high=high, scale=scale, type=kind))
        else:
            fixed[key] = spec
    return ranges, fixed


def method_overrides(method: MethodConfig, params: dict[str, Any]) -> list[str]:
    """``key=value`` overrides that turn the base run into this method with ``params``."""
    import yaml

    def dump(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    overrides = [f"loss.name={method.loss}", f"loss.miner={dump(method.miner)}",
                 f"loss.params={dump(method.params)}",
                 f"loss.miner_params={dump(method.miner_params)}", *method.overrides]
    overrides += [f"{key}={dump(value)}" for key, value in params.items()]
    return overrides


def method_run_config(bench: BenchConfig, method: MethodConfig, params: dict[str, Any],
                      extra: list[str] = ()) -> RunConfig:
    """The run configuration of ``method`` with searched/fixed ``params`` and extras."""
    values = apply_overrides(to_dict(bench.run), [*method_overrides(method, params), *extra])
    try:
        return from_dict(RunConfig, values)
    except ConfigError as error:
        raise ConfigError(f"method {method.name!r}: {error}") from None


def validate(bench: BenchConfig) -> None:
    """Check the methods against the registries and the search spaces against the schema."""
    from fairdml import losses
    from fairdml.losses import miners

    if bench.protocol.num_folds < 2:
        raise ConfigError(f"protocol.num_folds must be >= 2, got {bench.protocol.num_folds}")
    if bench.protocol.trials < 1 or bench.protocol.repeats < 1:
        raise ConfigError("protocol.trials and protocol.repeats must be >= 1")
    if bench.protocol.sampler not in ("tpe", "random"):
        raise ConfigError(f"protocol.sampler must be tpe or random, got "
                          f"{bench.protocol.sampler!r}")
    if not bench.methods:
        raise ConfigError("a benchmark preset needs at least one entry under 'methods'")
    seen = set()
    for method in bench.methods:
        if method.name in seen:
            raise ConfigError(f"method name {method.name!r} appears twice")
        seen.add(method.name)
        if method.loss not in losses.names():
            raise ConfigError(f"method {method.name!r}: unknown loss {method.loss!r}; valid: "
                              f"{', '.join(losses.names())}")
        if method.miner is not None and method.miner not in miners.names():
            raise ConfigError(f"method {method.name!r}: unknown miner {method.miner!r}; valid: "
                              f"{', '.join(miners.names())}")
        ranges, fixed = split_search_space(method)
        probe = {r.key: (r.choices[0] if r.choices else r.low) for r in ranges}
        method_run_config(bench, method, {**fixed, **probe})
