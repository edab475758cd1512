"""Wide ResNets: Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016), Table 1 and Sec. 2.

WRN-d-k: a 3x3 stem conv with 16 filters, three groups of n = (d - 4) / 6 pre-activation blocks
(BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3) with 16k, 32k and 64k filters at strides 1, 2, 2, a final BN-ReLU,
global average pooling and a linear classifier ``fc``. Dropout sits between the two convs (Sec. 2.4). As in the
authors' code, a shortcut that changes shape is a 1x1 conv applied to the pre-activated input. WRN-28-10 has 36.5M
parameters on CIFAR-10. Initialisation: :func:`lth_runner.models.init.init_weights` (the authors used He-normal with
fan-out for convs; fan-in here, as in every other model of this package).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_runner.errors import ConfigError
from lth_runner.models.init import init_weights


class PreActBlock(nn.Module):
    def __init__(self, f_in: int, f_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(f_in)
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """Stem ``conv1``, ``layer1..3`` of :class:`PreActBlock`, final ``bn``, average pool, classifier ``fc``."""

    def __init__(self, in_channels: int, depth: int, width: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError("model.depth", depth, "6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
        if width < 1:
            raise ConfigError("model.width", width, "an integer >= 1")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        f_in, stages = 16, []
        for stage, stride in enumerate((1, 2, 2)):
            f_out = 16 * width * 2**stage
            stages.append(
                nn.Sequential(
                    *(PreActBlock(f_in if i == 0 else f_out, f_out, stride if i == 0 else 1, dropout) for i in range(n))
                )
            )
            f_in = f_out
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(f_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(F.relu(self.bn(x))), 1))


def wide_resnet(
    input_shape: tuple[int, ...], num_classes: int, *, depth: int = 28, width: int = 10, dropout: float = 0.0
) -> nn.Module:
    """WRN-``depth``-``width`` (default WRN-28-10)."""
    return WideResNet(input_shape[0], depth, width, num_classes, dropout)
