"""Fully-connected networks.

``lenet_300_100`` is LeNet-300-100 as used by Frankle & Carbin, "The Lottery Ticket Hypothesis" (ICLR 2019),
Fig. 2 (after LeCun et al. 1998): Linear(in, 300)-ReLU-Linear(300, 100)-ReLU-Linear(100, C), named ``fc1..fc3``;
266,610 parameters on MNIST. ``mlp`` is the same network with any hidden widths, optional BatchNorm and dropout.
``logistic`` is logistic regression (binary with two classes), for paper 001's pixel-mask experiment.

Initialisation: :func:`lth_runner.models.init.init_weights` (``model.init`` picks He or Glorot normal).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from itertools import pairwise

import torch
from torch import nn

from lth_runner.errors import ConfigError
from lth_runner.models.init import init_weights


class MLP(nn.Sequential):
    """Flatten, then ``fc1 .. fcN`` with ReLU between; the last one, ``fcN``, is the classifier."""

    def __init__(
        self, in_features: int, hidden: list[int], num_classes: int, *, batch_norm: bool = False, dropout: float = 0.0
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        widths = [in_features, *hidden]
        for i, (n_in, n_out) in enumerate(pairwise(widths), start=1):
            # A bias before BatchNorm is cancelled by its mean subtraction.
            layers[f"fc{i}"] = nn.Linear(n_in, n_out, bias=not batch_norm)
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm1d(n_out)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"dropout{i}"] = nn.Dropout(dropout)
        layers[f"fc{len(widths)}"] = nn.Linear(widths[-1], num_classes)
        super().__init__(layers)


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: list[int] = (100, 100),
    batch_norm: bool = False,
    dropout: float = 0.0,
    init: str = "kaiming_normal",
) -> nn.Module:
    """A multilayer perceptron on the flattened input."""
    if any(int(width) < 1 for width in hidden):
        raise ConfigError("model.hidden", list(hidden), "a list of layer widths >= 1")
    model = MLP(math.prod(input_shape), [int(w) for w in hidden], num_classes, batch_norm=batch_norm, dropout=dropout)
    return init_weights(model, init)


def lenet_300_100(input_shape: tuple[int, ...], num_classes: int, *, init: str = "kaiming_normal") -> nn.Module:
    """LeNet-300-100 (Frankle & Carbin 2019, Fig. 2)."""
    return init_weights(MLP(math.prod(input_shape), [300, 100], num_classes), init)


class LogisticRegression(nn.Module):
    """Logistic regression on the flattened input, ``fc`` its one linear layer. With two classes ``fc`` has one
    output ``z`` (the logit of class 1) and the network returns ``[0, z]``, so the softmax cross-entropy is the
    binary logistic loss ``log(1 + exp(-y z))`` and a mask on ``fc.weight`` is a mask on input pixels (paper 001,
    Figs. 3-4); with more classes it is multinomial (one logit per class)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.binary = num_classes == 2
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_features, 1 if self.binary else num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.flatten(x))
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.binary else z


def logistic(input_shape: tuple[int, ...], num_classes: int, *, init: str = "glorot_normal") -> nn.Module:
    """Logistic regression, Glorot-initialised (seeded, so a reinit control differs), or started at zero."""
    model = LogisticRegression(math.prod(input_shape), num_classes)
    if init == "zeros":
        nn.init.zeros_(model.fc.weight)
        nn.init.zeros_(model.fc.bias)
        return model
    return init_weights(model, init)
