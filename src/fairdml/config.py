"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides.

A run is described by one `RunConfig` with sections ``data``, ``model``, ``loss``,
``optim``, ``train`` and ``eval``. Presets are YAML files (see ``configs/``); the command
line overrides any field with dotted keys, e.g. ``loss.name=triplet train.epochs=5
loss.params.margin=0.2``. Values are parsed as YAML scalars and checked against the field's
type: an unknown key or a value of the wrong type is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIRS = (Path(__file__).resolve().parents[2] / "configs", Path.cwd() / "configs")


class ConfigError(ValueError):
    """A preset or override that does not fit the configuration schema."""


@dataclasses.dataclass
class DataConfig:
    """Which data set, how it is split for validation, transformed and batched."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    transform: str = "digits"  # preset of fairdml.data.transforms
    crop_size: int | None = None
    resize_size: int | None = None
    classes_per_batch: int = 8  # C
    samples_per_class: int = 4  # M; batch size = C x M
    batch_size: int | None = None  # optional; when given, C = batch_size / M
    num_workers: int = 0
    num_folds: int = 4  # class-disjoint folds of the training classes
    val_fold: int | None = 0  # which fold validates; None trains on all training classes
    fold_seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_class < 1 or self.classes_per_batch < 1:
            raise ConfigError("data.classes_per_batch and data.samples_per_class must be >= 1, "
                              f"got {self.classes_per_batch} and {self.samples_per_class}")
        if self.batch_size is None:
            self.batch_size = self.classes_per_batch * self.samples_per_class
        elif self.batch_size % self.samples_per_class:
            raise ConfigError(f"data.batch_size {self.batch_size} is not divisible by "
                              f"data.samples_per_class {self.samples_per_class}")
        else:
            self.classes_per_batch = self.batch_size // self.samples_per_class


@dataclasses.dataclass
class ModelConfig:
    """Trunk + head; the fields are the arguments of `fairdml.models.create_embedder`."""

    trunk: str = "small_cnn"
    pretrained: bool = True
    weights: str | None = None
    in_channels: int = 3
    freeze_batchnorm: bool = False
    freeze_batchnorm_affine: bool = False
    pooling: str = "avg"
    embedding_dim: int | None = 128
    layer_norm: bool | str = False
    normalization: str = "l2"
    beta: float = 0.0
    curvature: float = 0.1
    clip_radius: float = 2.3


@dataclasses.dataclass
class LossConfig:
    """A registered loss (`fairdml.losses.names()`), its parameters and optional miner."""

    name: str = "multi_similarity"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    miner: str | None = None
    miner_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr_multiplier: float | None = None  # None: the loss's own default
    lr: float | None = None  # absolute learning rate for the loss parameters (overrides)


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and learning rates for the trunk, the head and the loss parameters."""

    name: str = "adam"  # adam | adamw | rmsprop | sgd
    lr: float = 1e-3
    trunk_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and rmsprop
    eps: float = 1e-8
    scheduler: str = "none"  # none | cosine | step
    step_size: int = 10
    gamma: float = 0.5


@dataclasses.dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 10
    iterations_per_epoch: int | None = None  # None: one pass of the class-balanced sampler
    warmup_epochs: int = 0  # epochs that train only the head and the loss parameters
    grad_clip: float | None = None
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads on CPU; None: torch's default
    val_every: int = 1
    early_stopping_patience: int | None = None  # validations without improvement
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclasses.dataclass
class EvalConfig:
    """Metrics computed on validation and test.

    ``rerank`` applies to the final test only; validation (model selection) always ranks
    the plain embeddings.
    """

    recall_ks: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8])
    metrics: list[str] | None = None  # None: all
    val_metric: str = "map@r"  # model selection metric, on validation only
    kmeans_seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 256
    flip_average: bool = False  # test-time: average embeddings of each image and its flip
    rerank: str | None = None  # test-time: k_reciprocal | query_expansion (fairdml.evaluate)
    rerank_params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunConfig:
    """Everything a training run needs."""

    name: str = "run"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- building


def from_dict(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys"
            f"{' of ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value or {}, where=path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"config key {path!r}: {value!r} is not a valid "
                          f"{_type_name(annotation)}")
    if annotation is Any:
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {path!r}: expected a list, got {value!r}")
        return [_coerce(item_type, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {path!r}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {path!r}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {path!r}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {path!r}: expected a string, got {value!r}")
    raise ConfigError(f"config key {path!r}: unsupported type {annotation!r}")


def _type_name(annotation: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(annotation))


def evaluation_options(config: EvalConfig) -> dict[str, Any]:
    """Keyword arguments of `fairdml.evaluate` for a final test with this config."""
    options: dict[str, Any] = {"recall_ks": tuple(config.recall_ks), "metrics": config.metrics,
                               "kmeans_seeds": tuple(config.kmeans_seeds)}
    if config.rerank is not None:
        options["rerank"] = config.rerank
        if config.rerank_params:
            options["rerank_params"] = dict(config.rerank_params)
    return options


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML / JSON)."""
    return dataclasses.asdict(config)


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML scalars)."""
    result = _deep_copy(values)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key=value")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {override!r}: empty key component")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {key!r}: cannot parse value {raw!r}: {error}") from None
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return result


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def find_preset(preset: str | Path) -> Path:
    """Resolve a preset given as a path or as a name under ``configs/`` (``.yaml`` optional)."""
    candidates = [Path(preset)]
    for directory in CONFIG_DIRS:
        candidates += [directory / str(preset), directory / f"{preset}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = sorted({p.relative_to(d).with_suffix("").as_posix()
                        for d in CONFIG_DIRS if d.is_dir() for p in d.rglob("*.yaml")})
    raise ConfigError(f"preset {str(preset)!r} not found; available presets: "
                      f"{', '.join(available) or '(none)'}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def load_config(preset: str | Path | None = None, overrides: Iterable[str] = (),
                cls: type = RunConfig) -> Any:
    """Load a preset (path or name) with overrides into a validated config of type ``cls``.

    Errors name the preset file and the offending key.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if preset is not None:
        path = find_preset(preset)
        values = read_yaml(path)
        source = str(path)
    values = apply_overrides(values, overrides)
    try:
        return from_dict(cls, values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
