"""Optimisers and schedules built from `OptimConfig`, with per-group learning rates.

Parameter groups: ``trunk`` (``optim.trunk_lr`` or ``optim.lr``), ``head`` (``optim.lr``)
and ``loss`` (the loss's own parameters: proxies, class weights, beta) at
``loss.lr`` or ``optim.lr * multiplier`` where the multiplier is ``loss.lr_multiplier``
from the config or the loss's own default (ProxyAnchor: 100).
"""

from __future__ import annotations

import torch

from fairdml.config import ConfigError, LossConfig, OptimConfig

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")


def parameter_groups(groups: dict[str, list[torch.nn.Parameter]], optim: OptimConfig,
                     loss_config: LossConfig, loss_multiplier: float) -> list[dict]:
    """Torch parameter groups with their learning rates; empty groups are dropped."""
    rates = {
        "trunk": optim.trunk_lr if optim.trunk_lr is not None else optim.lr,
        "head": optim.lr,
        "loss": loss_config.lr if loss_config.lr is not None else optim.lr * (
            loss_config.lr_multiplier if loss_config.lr_multiplier is not None
            else loss_multiplier),
    }
    result = []
    for name, parameters in groups.items():
        trainable = [p for p in parameters if p.requires_grad]
        if trainable:
            result.append({"name": name, "params": trainable, "lr": rates[name]})
    return result


def build_optimizer(groups: list[dict], optim: OptimConfig) -> torch.optim.Optimizer:
    name = optim.name.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay,
                                eps=optim.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay,
                                 eps=optim.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=optim.lr, weight_decay=optim.weight_decay,
                                   momentum=optim.momentum, eps=optim.eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, weight_decay=optim.weight_decay,
                               momentum=optim.momentum)
    raise ConfigError(f"config key 'optim.name': unknown optimiser {optim.name!r}; "
                      f"valid: {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig,
                    epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedule: none, cosine (to 0 over the run) or step decay."""
    if optim.scheduler == "none":
        return None
    if optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if optim.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size,
                                               gamma=optim.gamma)
    raise ConfigError(f"config key 'optim.scheduler': unknown schedule {optim.scheduler!r}; "
                      "valid: none, cosine, step")
