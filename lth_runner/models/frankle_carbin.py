"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of Frankle & Carbin, "The Lottery Ticket
Hypothesis" (ICLR 2019), Fig. 2 and Appendix F (after Simonyan & Zisserman 2015).

3x3 convolutions with padding 1 and ReLU, no BatchNorm, a 2x2 max-pool after each pair:
Conv-2 = 64, 64, pool; Conv-4 = + 128, 128, pool; Conv-6 = + 256, 256, pool; then FC 256-256-C.
On CIFAR-10 Conv-2 has 4.30M parameters, Conv-4 2.43M, Conv-6 2.26M. For inputs too small for every pool (a pool
would take the map below 1x1) that pool is left out. Initialisation: see :mod:`lth_runner.models.mlp` (open_lth's
He-normal by default; the paper's Gaussian Glorot with ``model.init=glorot_normal``).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import pairwise

from torch import nn

from lth_runner.models.init import init_weights

PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


class ConvNet(nn.Sequential):
    """``conv1..convK`` (3x3, ReLU) with ``pool1..`` between, then ``fc1``, ``fc2`` and the classifier ``fc3``."""

    def __init__(
        self, input_shape: tuple[int, ...], plan: list[int | str], num_classes: int, fc: tuple[int, int] = (256, 256)
    ) -> None:
        channels, height, width = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        n_conv = n_pool = 0
        for item in plan:
            if item == "M":
                if min(height, width) >= 2:
                    n_pool += 1
                    layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
                    height, width = height // 2, width // 2
                continue
            n_conv += 1
            layers[f"conv{n_conv}"] = nn.Conv2d(channels, int(item), kernel_size=3, padding=1)
            layers[f"relu{n_conv}"] = nn.ReLU()
            channels = int(item)
        layers["flatten"] = nn.Flatten()
        widths = [channels * height * width, *fc, num_classes]
        for i, (n_in, n_out) in enumerate(pairwise(widths), start=1):
            layers[f"fc{i}"] = nn.Linear(n_in, n_out)
            if i < len(widths) - 1:
                layers[f"fc_relu{i}"] = nn.ReLU()
        super().__init__(layers)


def conv2(input_shape: tuple[int, ...], num_classes: int, *, init: str = "kaiming_normal") -> nn.Module:
    """Conv-2 (Frankle & Carbin 2019, Fig. 2)."""
    return init_weights(ConvNet(input_shape, PLANS["conv2"], num_classes), init)


def conv4(input_shape: tuple[int, ...], num_classes: int, *, init: str = "kaiming_normal") -> nn.Module:
    """Conv-4 (Frankle & Carbin 2019, Fig. 2)."""
    return init_weights(ConvNet(input_shape, PLANS["conv4"], num_classes), init)


def conv6(input_shape: tuple[int, ...], num_classes: int, *, init: str = "kaiming_normal") -> nn.Module:
    """Conv-6 (Frankle & Carbin 2019, Fig. 2)."""
    return init_weights(ConvNet(input_shape, PLANS["conv6"], num_classes), init)
