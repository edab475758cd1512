"""Datasets: a registry of loaders and :func:`build_data`, which turns a dataset config into a :class:`DataBundle`.

Add a dataset by registering a loader with its config dataclass (the built-ins are declared in
:mod:`lth_runner.catalog`)::

    @DATASETS.register("mydata", config=MyDataConfig)
    def load_mydata(cfg: MyDataConfig, root: Path) -> ArrayDataset | DataBundle: ...

A loader returning an :class:`ArrayDataset` gets the in-memory pipeline (validation split, per-batch augmentation
on the training device); a loader returning a :class:`DataBundle` is used as is (it receives the batch sizes and
device as keyword arguments ``batch_size``, ``eval_batch_size``, ``device`` if it accepts them).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from lth_runner.catalog import DATASETS
from lth_runner.config.schema import DatasetConfig
from lth_runner.data.base import (
    ArrayDataset,
    Batch,
    DataBundle,
    DataSpec,
    InMemoryData,
    LabelNoise,
    keep_classes,
    noisy_training_labels,
    split_arrays,
)
from lth_runner.data.transforms import BatchTransform
from lth_runner.errors import ConfigError

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "Batch",
    "DataBundle",
    "DataSpec",
    "InMemoryData",
    "LabelNoise",
    "BatchTransform",
    "build_data",
    "dataset_root",
]


def dataset_root(cfg: DatasetConfig, data_root: str | Path) -> Path:
    return Path(cfg.root) if cfg.root else Path(data_root) / cfg.name


def build_data(
    cfg: DatasetConfig,
    *,
    data_root: str | Path = "data",
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> DataBundle:
    """Load the dataset named by ``cfg.name`` and wrap it for training."""
    loader = DATASETS.get(cfg.name)
    root = dataset_root(cfg, data_root)
    accepted = inspect.signature(loader).parameters
    extra = dict(batch_size=batch_size, eval_batch_size=eval_batch_size, device=device, channels_last=channels_last)
    loaded = loader(cfg, root, **{k: v for k, v in extra.items() if k in accepted})
    if isinstance(loaded, DataBundle):
        if cfg.classes is not None:
            raise ConfigError("dataset.classes", cfg.classes, f"null with dataset={cfg.name} (in-memory datasets only)")
        if cfg.label_noise:
            raise ConfigError(
                "dataset.label_noise", cfg.label_noise, f"0.0 with dataset={cfg.name} (in-memory datasets only)"
            )
        return loaded
    return in_memory(
        cfg, loaded, batch_size=batch_size, eval_batch_size=eval_batch_size, device=device, channels_last=channels_last
    )


def in_memory(
    cfg: DatasetConfig,
    arrays: ArrayDataset,
    *,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device | str,
    channels_last: bool = False,
) -> InMemoryData:
    if cfg.classes is not None:
        arrays = keep_classes(arrays, cfg.classes)
    splits = split_arrays(
        arrays,
        val_size=cfg.val_size,
        split_seed=cfg.split_seed,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
    )
    noise = None
    if cfg.label_noise:  # after the validation split: validation and test labels stay clean
        splits, noise = noisy_training_labels(
            splits, arrays.num_classes, cfg.label_noise, cfg.label_noise_mode, cfg.split_seed
        )
    is_image = arrays.train_x.dim() == 4
    transform = BatchTransform(
        arrays.mean,
        arrays.std,
        crop_padding=cfg.crop_padding if cfg.augment and is_image else 0,
        flip=cfg.augment and is_image,
        channels_last=channels_last,
    )
    placement = torch.device("cpu") if cfg.placement == "cpu" else torch.device(device)
    spec = DataSpec(cfg.name, tuple(arrays.train_x.shape[1:]), arrays.num_classes)
    return InMemoryData(
        spec,
        splits,
        transform,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        device=placement,
        label_noise=noise,
    )
