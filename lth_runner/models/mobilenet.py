"""MobileNet-V1 for CIFAR: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications" (2017), Table 1, in the common CIFAR adaptation of kuangliu/pytorch-cifar.

A 3x3 stride-1 stem conv with 32 filters (the paper strides 2 for 224-pixel ImageNet images), then 13
depthwise-separable blocks (3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU) with 4 stride-2 blocks instead
of the paper's 5, global average pooling and a linear classifier ``fc``. ``model.width_mult`` is the paper's width
multiplier alpha (Sec. 3.3), applied to every layer. 3.2M parameters on CIFAR-10 at alpha = 1. Depthwise convs are
plain ``nn.Conv2d`` with ``groups`` so they are pruned like any conv. Initialisation:
:func:`lth_runner.models.init.init_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_runner.errors import ConfigError
from lth_runner.models.init import init_weights

# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]


class DepthwiseSeparable(nn.Module):
    def __init__(self, f_in: int, f_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_in, kernel_size=3, stride=stride, padding=1, groups=f_in, bias=False)
        self.bn1 = nn.BatchNorm2d(f_in)
        self.conv2 = nn.Conv2d(f_in, f_out, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MobileNetV1(nn.Module):
    """Stem ``conv1``/``bn1``, ``layers.0..12`` of :class:`DepthwiseSeparable`, average pool, classifier ``fc``."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError("model.width_mult", width_mult, "a number > 0")

        def scaled(channels: int) -> int:
            return max(1, int(channels * width_mult))

        self.conv1 = nn.Conv2d(in_channels, scaled(32), kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(scaled(32))
        f_in, blocks = scaled(32), []
        for channels, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(f_in, scaled(channels), stride))
            f_in = scaled(channels)
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def mobilenet_v1(input_shape: tuple[int, ...], num_classes: int, *, width_mult: float = 1.0) -> nn.Module:
    """MobileNet-V1 (CIFAR strides) with width multiplier ``width_mult``."""
    return MobileNetV1(input_shape[0], num_classes, width_mult)
