"""Models: a registry of builders and :func:`build_model`.

A builder takes the input shape and class count from the dataset plus its own keyword options (the built-ins are
declared in :mod:`lth_runner.catalog`; a plugin registers its own)::

    @MODELS.register("mynet", inputs="image")
    def mynet(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module: ...

``inputs`` says what data it accepts: ``"image"`` (C x H x W) or ``"any"`` (flattened). Keyword options become
``model.<option>`` config keys, type-checked against the annotations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lth_runner.catalog import MODELS
from lth_runner.config.schema import ModelConfig
from lth_runner.errors import ConfigError

__all__ = ["MODELS", "build_model"]


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int | None = None
) -> nn.Module:
    """Build ``cfg.arch`` for the given data; with ``seed`` the initialisation is reproducible."""
    entry = MODELS.entry(cfg.arch)
    if entry.meta.get("inputs", "any") == "image" and len(input_shape) != 3:
        raise ConfigError(
            "model.arch",
            cfg.arch,
            f"a model for flat inputs: the data have shape {tuple(input_shape)} and {cfg.arch} needs images (C, H, W)",
        )
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return entry.obj(tuple(input_shape), num_classes, **kwargs)
    return entry.obj(tuple(input_shape), num_classes, **kwargs)
