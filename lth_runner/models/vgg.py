"""VGG-11/13/16/19 with BatchNorm for CIFAR: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition" (ICLR 2015), Table 1 configurations A, B, D and E, in the CIFAR form of open_lth's ``cifar_vgg``
(as used by Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis").

Each 3x3 conv (padding 1) is followed by BatchNorm and ReLU, with 2x2 max-pools between the groups. As in open_lth,
the last max-pool is replaced by global average pooling and the three FC layers by one linear classifier ``fc``
(512 -> C): VGG-19 has 20.0M parameters on CIFAR-10. A pool that would take the map below 1x1 (small inputs) is
left out. Initialisation: :func:`lth_runner.models.init.init_weights`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from lth_runner.models.init import init_weights

PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    """``features`` (``conv1``, ``bn1``, ``relu1``, ``pool1``, ...), global average pool, classifier ``fc``."""

    def __init__(
        self, input_shape: tuple[int, ...], plan: list[int | str], num_classes: int, width_mult: float = 1.0
    ) -> None:
        super().__init__()
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
            item = max(1, round(int(item) * width_mult))
            # Conv biases are kept (redundant before BatchNorm) to match open_lth and torchvision's vgg*_bn.
            layers[f"conv{n_conv}"] = nn.Conv2d(channels, int(item), kernel_size=3, padding=1)
            layers[f"bn{n_conv}"] = nn.BatchNorm2d(int(item))
            layers[f"relu{n_conv}"] = nn.ReLU()
            channels = int(item)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def vgg11(input_shape: tuple[int, ...], num_classes: int, *, width_mult: float = 1.0) -> nn.Module:
    """VGG-11-BN (configuration A); ``width_mult`` scales every conv layer's channels."""
    return VGG(input_shape, PLANS["vgg11"], num_classes, width_mult)


def vgg13(input_shape: tuple[int, ...], num_classes: int, *, width_mult: float = 1.0) -> nn.Module:
    """VGG-13-BN (configuration B); ``width_mult`` scales every conv layer's channels."""
    return VGG(input_shape, PLANS["vgg13"], num_classes, width_mult)


def vgg16(input_shape: tuple[int, ...], num_classes: int, *, width_mult: float = 1.0) -> nn.Module:
    """VGG-16-BN (configuration D); ``width_mult`` scales every conv layer's channels."""
    return VGG(input_shape, PLANS["vgg16"], num_classes, width_mult)


def vgg19(input_shape: tuple[int, ...], num_classes: int, *, width_mult: float = 1.0) -> nn.Module:
    """VGG-19-BN (configuration E); ``width_mult`` scales every conv layer's channels."""
    return VGG(input_shape, PLANS["vgg19"], num_classes, width_mult)
