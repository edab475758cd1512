"""ResNet-20/32/44/56/110 for CIFAR: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2.

A 3x3 stem conv with 16 filters, three stages of n basic blocks (depth 6n + 2) with 16, 32 and 64 filters
(``model.width`` scales all three) at strides 1, 2, 2, global average pooling and a linear classifier ``fc``.
As in open_lth (Frankle's reference code, ``cifar_resnet``), a shortcut that changes shape is a 1x1 conv + BN
projection (He et al.'s option B) rather than the paper's zero-padding option A; this adds 2,752 parameters to
ResNet-20 (269,722 -> 272,474 at width 16). Initialisation: :func:`lth_runner.models.init.init_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_runner.errors import ConfigError
from lth_runner.models.init import init_weights


class BasicBlock(nn.Module):
    def __init__(self, f_in: int, f_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(f_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``conv1``/``bn1``, ``layer1..3`` of :class:`BasicBlock`, average pool, classifier ``fc``."""

    def __init__(self, in_channels: int, depth: int, num_classes: int, *, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError("model.width", width, "an integer >= 1")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        f_in, stages = width, []
        for stage, stride in enumerate((1, 2, 2)):
            f_out = width * 2**stage
            stages.append(
                nn.Sequential(
                    *(BasicBlock(f_in if i == 0 else f_out, f_out, stride if i == 0 else 1) for i in range(n))
                )
            )
            f_in = f_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> nn.Module:
    """ResNet-20 (n = 3)."""
    return CifarResNet(input_shape[0], 20, num_classes, width=width)


def resnet32(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> nn.Module:
    """ResNet-32 (n = 5)."""
    return CifarResNet(input_shape[0], 32, num_classes, width=width)


def resnet44(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> nn.Module:
    """ResNet-44 (n = 7)."""
    return CifarResNet(input_shape[0], 44, num_classes, width=width)


def resnet56(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> nn.Module:
    """ResNet-56 (n = 9)."""
    return CifarResNet(input_shape[0], 56, num_classes, width=width)


def resnet110(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> nn.Module:
    """ResNet-110 (n = 18)."""
    return CifarResNet(input_shape[0], 110, num_classes, width=width)
