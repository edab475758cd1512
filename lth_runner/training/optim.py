"""Optimizers from :class:`~lth_runner.config.schema.OptimConfig`: one builder per name, registered in
``OPTIMIZERS`` (:mod:`lth_runner.catalog`) under the name ``optim.name`` takes, as ``f(params, cfg) -> Optimizer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lth_runner.catalog import OPTIMIZERS
from lth_runner.config.schema import OptimConfig


def sgd(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
        foreach=True,
    )


def adam(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
    )


def adamw(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
    )


def build_optimizer(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` over the trainable ``params``: parameters, or parameter groups (dicts with
    ``params`` and the group's own settings, e.g. ``weight_decay``, ``momentum``, and ``lr_scale``: the group's
    learning rate is the schedule's times this). Groups left with no trainable parameter are dropped."""
    items = list(params)
    if items and isinstance(items[0], dict):
        groups = [{**group, "params": [p for p in group["params"] if p.requires_grad]} for group in items]
        return OPTIMIZERS.get(cfg.name)([g for g in groups if g["params"]], cfg)
    return OPTIMIZERS.get(cfg.name)([p for p in items if p.requires_grad], cfg)


def load_state_keeping_hyperparameters(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimizer state (momentum buffers, Adam moments, step counts) but keep the hyper-parameters
    the optimizer was built with: ``load_state_dict`` would otherwise restore the saved groups' weight decay,
    momentum, betas, ... and silently override the stage's own settings."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled rate ``lr`` for every group, times the group's ``lr_scale`` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
