"""MNIST-1D (Greydanus 2020): 40-sample 1-D signals of the ten digit templates, generated offline and seeded.

Generation takes about a second per 5k examples, so the arrays are cached under the dataset root, keyed by every
generator argument; a cache file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lth_runner.config.schema import Mnist1dConfig
from lth_runner.data.base import ArrayDataset
from lth_runner.errors import UserError
from lth_runner.utils.io import save_torch_atomic


def load_mnist1d(cfg: Mnist1dConfig, root: Path) -> ArrayDataset:
    args = {"num_samples": cfg.num_samples, "train_split": cfg.train_split, "seed": cfg.generator_seed}
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    cache = root / f"mnist1d_{key}.pt"
    if cache.exists():
        data = torch.load(cache, weights_only=True)
    else:
        data = _generate(args)
        try:
            save_torch_atomic(cache, data)
        except OSError:  # a read-only data root only costs a regeneration next time
            pass
    return ArrayDataset(data["x"], data["y"], data["x_test"], data["y_test"], num_classes=10)


def _generate(args: dict) -> dict[str, torch.Tensor]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise UserError("dataset.name=mnist1d needs the 'mnist1d' package: pip install mnist1d") from None
    dataset_args = get_dataset_args()
    for name, value in args.items():
        setattr(dataset_args, name, value)
    raw = make_dataset(dataset_args)
    return {
        "x": torch.as_tensor(raw["x"], dtype=torch.float32),
        "y": torch.as_tensor(raw["y"], dtype=torch.long),
        "x_test": torch.as_tensor(raw["x_test"], dtype=torch.float32),
        "y_test": torch.as_tensor(raw["y_test"], dtype=torch.long),
    }
