"""Weight initialisation shared by the built-in models.

Follows open_lth (Frankle's reference code): He-normal (fan-in) weights for every conv and linear layer, BatchNorm
scale 1 and shift 0, and PyTorch's default biases. Frankle & Carbin's original TensorFlow code used Gaussian Glorot
weights and zero biases for LeNet and Conv-2/4/6; ``model.init=glorot_normal`` reproduces that.
"""

from __future__ import annotations

from torch import nn

from lth_runner.errors import ConfigError
from lth_runner.sparse.prunable import PRUNABLE_LAYERS

INITS = ("kaiming_normal", "glorot_normal")


def init_weights(model: nn.Module, scheme: str = "kaiming_normal") -> nn.Module:
    """Initialise ``model`` in place from the global torch generator (so ``build_model``'s seed decides it)."""
    if scheme not in INITS:
        raise ConfigError("model.init", scheme, f"one of: {', '.join(INITS)}")
    for module in model.modules():
        if isinstance(module, PRUNABLE_LAYERS):
            if scheme == "kaiming_normal":
                nn.init.kaiming_normal_(module.weight)
            else:
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
