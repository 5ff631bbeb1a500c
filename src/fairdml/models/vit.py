"""Vision-transformer trunks from timm (imported lazily): ViT-S/16, DeiT-S, DINO ViT-S/16.

``forward(images)`` returns the token sequence after the final LayerNorm,
``(B, num_prefix_tokens + N, 384)``: the CLS token first (DeiT-distilled: CLS then the
distillation token), then the N patch tokens. The head pools it: ``pooling="cls"`` takes
the CLS token (Hyp-ViT, DINO), ``"avg"`` / ``"max"`` / ``"avg+max"`` pool the patch tokens
(see :mod:`fairdml.models.heads`).

=====================  ======================================  ==========================
fairdml name           timm model                              preprocessing (mean / std)
=====================  ======================================  ==========================
vit_s16                vit_small_patch16_224 (augreg, in21k    0.5 / 0.5
                       fine-tuned on in1k)
deit_s                 deit_small_patch16_224                  ImageNet
deit_s_distilled       deit_small_distilled_patch16_224        ImageNet
dino_vit_s16           vit_small_patch16_224.dino              ImageNet
=====================  ======================================  ==========================

All take 224x224 crops (resized to 256 first: the DML protocol); other sizes that are a
multiple of 16 work too (timm interpolates the position embedding). Pretrained weights come
from the Hugging Face hub through timm (its local cache is used offline). ``weights=PATH``
takes a timm / official checkpoint (``.pth`` or ``.safetensors``); timm's own checkpoint
filter converts official DeiT / DINO files, and classifier keys (``head.*``,
``head_dist.*``) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fairdml.models.preprocessing import Preprocessing
from fairdml.models.trunks import Trunk, register_trunk
from fairdml.models.weights import host_reachable, offline, warn_unavailable

TIMM_NAMES = {
    "vit_s16": "vit_small_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_s_distilled": "deit_small_distilled_patch16_224",
    "dino_vit_s16": "vit_small_patch16_224.dino",
}
_CLASSIFIER_KEYS = ("head.", "head_dist.")


class TimmViT(Trunk):
    """A timm vision transformer returning its tokens (see the module docstring)."""

    output_format = "tokens"

    def __init__(self, timm_name: str, *, pretrained: bool, in_channels: int) -> None:
        super().__init__()
        import timm

        self.timm_name = timm_name
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_channels}
        model = None
        if pretrained:
            model = _create_pretrained(timm_name, kwargs)
        if model is None:
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
        self.model = model
        self.feature_dim = int(model.num_features)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        config = model.pretrained_cfg
        crop = int(config.get("input_size", (3, 224, 224))[-1])
        self.preprocessing = Preprocessing(
            mean=tuple(config["mean"]), std=tuple(config["std"]), crop_size=crop,
            resize_size=round(crop * 256 / 224)).with_channels(in_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept fairdml files (``model.`` prefix) and timm / official checkpoints."""
        if state and all(key.startswith("model.") for key in state):
            return state
        import importlib

        filter_module = importlib.import_module(type(self.model).__module__)
        filter_fn = getattr(filter_module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, self.model)
        return {f"model.{key}": value for key, value in state.items()
                if not key.startswith(_CLASSIFIER_KEYS)}


def _create_pretrained(timm_name: str, kwargs: dict[str, Any]) -> torch.nn.Module | None:
    """The timm model with its published weights, or None after one clear warning."""
    import timm

    cached = _cached_hub_file(timm_name)
    try:
        if cached is not None:
            return timm.create_model(timm_name, pretrained=True,
                                     pretrained_cfg_overlay={"file": cached}, **kwargs)
        if offline():
            warn_unavailable(timm_name, "FAIRDML_OFFLINE is set and the weights are not in "
                                        "the Hugging Face cache")
            return None
        if not host_reachable("huggingface.co"):
            warn_unavailable(timm_name, "huggingface.co is unreachable and the weights are "
                                        "not in the Hugging Face cache")
            return None
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as error:  # download or cache failure: fall back loudly
        warn_unavailable(timm_name, f"{type(error).__name__}: {error}")
        return None


def _cached_hub_file(timm_name: str) -> str | None:
    """Path of the model's weights in the local Hugging Face cache, if present."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hub_id = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def _factory(timm_name: str) -> Callable[..., TimmViT]:
    def create(*, pretrained: bool = True, in_channels: int = 3) -> TimmViT:
        return TimmViT(timm_name, pretrained=pretrained, in_channels=in_channels)

    create.__doc__ = f"timm {timm_name!r} trunk; tokens of width 384."
    return create


for _name, _timm_name in TIMM_NAMES.items():
    _create = _factory(_timm_name)
    register_trunk(_name)(_create)
    register_trunk(_timm_name)(_create)
