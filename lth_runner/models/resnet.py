"""ResNet-18/34/50: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Table 1, with a stem
chosen for the input size.

``model.stem``: ``imagenet`` is the paper's 7x7 stride-2 conv + 3x3 stride-2 max-pool; ``cifar`` is a 3x3 stride-1
conv without max-pool (the usual CIFAR adaptation, e.g. kuangliu/pytorch-cifar); ``auto`` picks ``cifar`` for inputs
up to 64 pixels high.
Bottleneck blocks stride in the 3x3 conv ("ResNet v1.5", as torchvision) and shortcuts that change shape are
1x1 conv + BN projections. Module names follow torchvision (``conv1``, ``layer1.0.conv1``, ``downsample``, ``fc``),
so torchvision state dicts load into the ``imagenet`` stem. ResNet-50 with the CIFAR stem and 10 classes has 23.5M
parameters. Initialisation: :func:`lth_runner.models.init.init_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_runner.errors import ConfigError
from lth_runner.models.init import init_weights

STEMS = ("auto", "cifar", "imagenet")


def _downsample(f_in: int, f_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and f_in == f_out:
        return None
    return nn.Sequential(nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(f_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, f_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(f_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, f_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(f_in, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """Stem ``conv1``/``bn1`` (+ ``maxpool``), ``layer1..4`` at ``width`` x 1/2/4/8 planes (64: the published
    networks), average pool, ``fc``."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        block: type[BasicBlock | Bottleneck],
        blocks: list[int],
        num_classes: int,
        stem: str = "auto",
        width: int = 64,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError("model.stem", stem, f"one of: {', '.join(STEMS)}")
        if stem == "auto":
            stem = "cifar" if input_shape[1] <= 64 else "imagenet"
        kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
        if width < 1:
            raise ConfigError("model.width", width, "an integer >= 1")
        self.conv1 = nn.Conv2d(
            input_shape[0], width, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        f_in, stages = width, []
        for stage, n in enumerate(blocks):
            planes, stride = width * 2**stage, 1 if stage == 0 else 2
            layers = []
            for i in range(n):
                layers.append(block(f_in, planes, stride if i == 0 else 1))
                f_in = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(input_shape: tuple[int, ...], num_classes: int, *, stem: str = "auto", width: int = 64) -> nn.Module:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return ResNet(input_shape, BasicBlock, [2, 2, 2, 2], num_classes, stem, width)


def resnet34(input_shape: tuple[int, ...], num_classes: int, *, stem: str = "auto", width: int = 64) -> nn.Module:
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return ResNet(input_shape, BasicBlock, [3, 4, 6, 3], num_classes, stem, width)


def resnet50(input_shape: tuple[int, ...], num_classes: int, *, stem: str = "auto", width: int = 64) -> nn.Module:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(input_shape, Bottleneck, [3, 4, 6, 3], num_classes, stem, width)
