"""Random tensors of any shape with random labels: for smoke tests and for timing, not for learning."""

from __future__ import annotations

from pathlib import Path

import torch

from lth_runner.config.schema import SyntheticConfig
from lth_runner.data.base import ArrayDataset


def load_synthetic(cfg: SyntheticConfig, root: Path) -> ArrayDataset:
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = tuple(cfg.shape)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.dtype == "uint8":
            x = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
        else:
            x = torch.randn((count, *shape), generator=generator)
        return x, torch.randint(0, cfg.num_classes, (count,), generator=generator)

    train_x, train_y = draw(cfg.train_size)
    test_x, test_y = draw(cfg.test_size)
    channels = shape[0] if len(shape) == 3 else 1
    mean, std = ((0.5,) * channels, (0.25,) * channels) if cfg.dtype == "uint8" and len(shape) == 3 else (None, None)
    return ArrayDataset(train_x, train_y, test_x, test_y, cfg.num_classes, mean, std)
