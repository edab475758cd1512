"""Any model of the timm library (Wightman, "PyTorch Image Models", https://github.com/huggingface/pytorch-image-models).

``model.name`` picks the timm model; other ``model.*`` keys are passed to ``timm.create_model``. Nothing is
downloaded: ``model.pretrained`` must stay false, and local weights load from ``model.checkpoint_path`` (tensors whose
shape differs, such as a classifier for another class count, are skipped with a warning). timm is imported only when
this builder runs, so importing :mod:`lth_runner.models` stays cheap. Initialisation is timm's own per model; it draws
from the global torch generator, so ``build_model``'s seed still makes it reproducible. Which layer is the classifier
depends on the timm model: check it is the last conv/linear module before excluding "last" from pruning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lth_runner.errors import ConfigError


def timm_model(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    name: str = "resnet18",
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=..., **kwargs)``, optionally loading local weights."""
    if pretrained:
        raise ConfigError(
            "model.pretrained",
            True,
            "false (no weights are downloaded; pass model.checkpoint_path=FILE to load local weights)",
        )
    import timm

    if not timm.is_model(name):
        raise ConfigError("model.name", name, "a timm model name (see timm.list_models())")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return model


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict (or a checkpoint holding one under ``state_dict``/``model``) into ``model``."""
    if not Path(path).is_file():
        raise ConfigError("model.checkpoint_path", path, "an existing file holding a state dict")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if skipped:
        warnings.warn(
            f"{path}: not loading {', '.join(skipped)} (shape differs from the model's; these keep their "
            "fresh initialisation)",
            stacklevel=2,
        )
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ConfigError(
            "model.checkpoint_path",
            path,
            f"a state dict for this model (missing keys: {missing[:5]}, unexpected keys: {unexpected[:5]})",
        )
