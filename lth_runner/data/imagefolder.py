"""Folder-of-images datasets (ImageNet, Tiny-ImageNet, ...): ``root/<train_dir>/<class>/*`` and
``root/<test_dir>/<class>/*``, decoded by ``torchvision.datasets.ImageFolder`` and streamed through a DataLoader.

Too large to hold in memory, so this loader returns its own :class:`DataBundle`: the validation split is a seeded,
stratified hold-out of the training folder, the training order is a permutation drawn from the seed passed to
:meth:`ImageFolderData.train_batches`, and each rank loads only its slice of every global batch. With
``num_workers`` > 0 the workers' augmentation seeds also derive from that seed (through the DataLoader's generator).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from lth_runner.config.schema import ImageFolderConfig
from lth_runner.data.base import Batch, DataBundle, DataSpec
from lth_runner.data.splits import holdout_count, stratified_split
from lth_runner.errors import ConfigError, DataNotFoundError, UserError


def load_imagefolder(
    cfg: ImageFolderConfig,
    root: Path,
    *,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> ImageFolderData:
    return ImageFolderData(
        cfg,
        Path(root),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        device=device,
        channels_last=channels_last,
    )


class ImageFolderData(DataBundle):
    """Train/val from ``root/<train_dir>``, test from ``root/<test_dir>``; normalised batches on ``device``."""

    def __init__(
        self,
        cfg: ImageFolderConfig,
        root: Path,
        *,
        batch_size: int,
        eval_batch_size: int,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> None:
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.num_workers = cfg.num_workers
        root = Path(root).absolute()
        train_tf, eval_tf = _transforms(cfg)
        self._train = _open(root / cfg.train_dir, train_tf, "dataset.train_dir", cfg)
        # The validation images are training-folder images seen through the evaluation transforms; a shallow copy
        # shares the (possibly million-entry) sample list instead of rescanning the folder.
        self._val = copy.copy(self._train)
        self._val.transform = eval_tf
        self._test = _open(root / cfg.test_dir, eval_tf, "dataset.test_dir", cfg, classes=self._train.class_to_idx)

        targets = torch.tensor(self._train.targets)
        try:
            holdout = holdout_count(cfg.val_size, targets.numel())
        except ValueError:
            accepted = f"fewer than the {targets.numel()} training images"
            raise ConfigError("dataset.val_size", cfg.val_size, accepted) from None
        keep, held = stratified_split(targets, holdout, cfg.split_seed)
        if cfg.train_subset is not None and cfg.train_subset < keep.numel():
            sub, _ = stratified_split(targets[keep], keep.numel() - cfg.train_subset, cfg.split_seed + 1)
            keep = keep[sub]
        test = torch.arange(len(self._test))
        if cfg.test_subset is not None and cfg.test_subset < test.numel():
            sub, _ = stratified_split(
                torch.tensor(self._test.targets), test.numel() - cfg.test_subset, cfg.split_seed + 2
            )
            test = test[sub]
        self._indices = {"train": keep, "val": held, "test": test}
        self.spec = DataSpec(cfg.name, (3, cfg.image_size, cfg.image_size), len(self._train.classes))

    def size(self, split: str) -> int:
        return int(self._indices[split].numel())

    def train_batches(
        self, seed: int, *, skip: int = 0, rank: int = 0, world_size: int = 1, batch_size: int | None = None
    ) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(int(seed))
        order = self._indices["train"][torch.randperm(self.size("train"), generator=generator)]
        # Skipped batches are never loaded; slicing at the index level means each rank decodes only its images.
        split = order.split(batch_size or self.batch_size)[skip:]
        batches = [index.tensor_split(world_size)[rank].tolist() for index in split]
        yield from self._load(self._train, batches, generator)

    def eval_batches(self, split: str, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        indices = self._indices[split].tensor_split(world_size)[rank]
        dataset = self._test if split == "test" else self._val
        yield from self._load(dataset, [index.tolist() for index in indices.split(self.eval_batch_size)], None)

    def _load(
        self, dataset: ImageFolder, batches: list[list[int]], generator: torch.Generator | None
    ) -> Iterator[Batch]:
        loader = DataLoader(
            dataset,
            batch_sampler=[b for b in batches if b],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=generator,
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def _transforms(cfg: ImageFolderConfig) -> tuple[T.Compose, T.Compose]:
    # ImageNet convention: evaluate on the centre crop of an image resized to ~1.14x the crop (256 for 224).
    resize = cfg.resize or round(cfg.image_size * 1.14)
    finish = [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    evaluate = [T.Resize(resize), T.CenterCrop(cfg.image_size)]
    augment = [T.RandomResizedCrop(cfg.image_size), T.RandomHorizontalFlip()]
    return T.Compose((augment if cfg.augment else evaluate) + finish), T.Compose(evaluate + finish)


def _open(
    folder: Path, transform: T.Compose, key: str, cfg: ImageFolderConfig, classes: dict[str, int] | None = None
) -> ImageFolder:
    """ImageFolder over ``folder``; with ``classes``, labelled by that (training) mapping so indices agree."""
    if not folder.is_dir():
        raise DataNotFoundError(
            f"dataset {cfg.name} not found: no folder {folder}; set dataset.root=DIR to a folder holding "
            f"{cfg.train_dir}/<class>/*.JPEG and {cfg.test_dir}/<class>/*, or {key}=NAME"
        )
    try:
        if classes is None:
            dataset = ImageFolder(str(folder), transform=transform)
        else:
            dataset = _LabelledFolder(str(folder), classes, transform=transform, allow_empty=True)
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        raise DataNotFoundError(f"dataset {cfg.name}: {' '.join(str(err).split())} (in {folder})") from None
    if len(dataset) == 0:
        raise DataNotFoundError(f"dataset {cfg.name}: no images in the class folders of {folder}")
    return dataset


class _LabelledFolder(ImageFolder):
    """An ImageFolder whose class indices are given (the training folder's), not derived from its own class list."""

    def __init__(self, root: str, class_to_idx: dict[str, int], **kwargs) -> None:
        self._given = class_to_idx
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        present, _ = super().find_classes(directory)
        unknown = sorted(set(present) - self._given.keys())
        if unknown:
            raise UserError(f"{directory} has class folders not in the training folder: {', '.join(unknown[:5])}")
        return sorted(self._given, key=self._given.get), dict(self._given)
