"""The data interface the trainer sees, and the in-memory implementation used by every small dataset.

A loader either returns an :class:`ArrayDataset` (whole train/test arrays; wrapped by :class:`InMemoryData`, which
holds uint8 tensors on the training device and augments per batch) or a ready :class:`DataBundle` (folder
datasets streamed through a DataLoader).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lth_runner.data.splits import holdout_count, stratified_split
from lth_runner.data.transforms import BatchTransform
from lth_runner.errors import ConfigError
from lth_runner.utils.seeding import derive_seed

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class ArrayDataset:
    """Whole train and test sets as tensors (uint8 images N x C x H x W, or float features), labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: Sequence[float] | None = None  # per channel, in [0, 1] units for uint8 data
    std: Sequence[float] | None = None


class DataBundle(abc.ABC):
    """Train/val/test splits with batch iterators. Training order depends only on the seed passed in, so a
    resumed run sees exactly the batches an uninterrupted one would."""

    spec: DataSpec
    batch_size: int
    eval_batch_size: int

    @abc.abstractmethod
    def size(self, split: str) -> int:
        """Number of examples in ``train``, ``val`` or ``test``."""

    @abc.abstractmethod
    def train_batches(
        self, seed: int, *, skip: int = 0, rank: int = 0, world_size: int = 1, batch_size: int | None = None
    ) -> Iterator[Batch]:
        """One epoch of augmented, normalised training batches in a seeded order; ``skip`` drops leading batches.

        With ``world_size`` > 1 each rank receives its slice of every global batch (``batch_size`` is global;
        None: the bundle's own, a stage may train with another)."""

    @abc.abstractmethod
    def eval_batches(self, split: str, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Normalised batches of ``val`` or ``test``, in order, without augmentation."""

    def num_train_batches(self, batch_size: int | None = None) -> int:
        return math.ceil(self.size("train") / (batch_size or self.batch_size))

    def describe(self) -> str:
        sizes = ", ".join(f"{split} {self.size(split)}" for split in ("train", "val", "test"))
        return f"{self.spec.name}: input {tuple(self.spec.input_shape)}, {self.spec.num_classes} classes ({sizes})"


@dataclass(frozen=True)
class LabelNoise:
    """What ``dataset.label_noise`` did to the training split: ``changed`` of ``total`` labels now differ from the
    true ones (``fraction`` was asked for; with mode ``any`` about ``1/K`` of the redrawn labels are unchanged)."""

    fraction: float
    mode: str
    redrawn: int
    changed: int
    total: int

    @property
    def realised(self) -> float:
        return self.changed / self.total if self.total else 0.0

    def describe(self) -> str:
        return (
            f"label noise: {self.changed} of {self.total} training labels wrong ({100 * self.realised:.2f}%, "
            f"asked {100 * self.fraction:.2f}%, mode {self.mode})"
        )


class InMemoryData(DataBundle):
    """Tensors resident on one device; batches are gathered, augmented and normalised there with tensor ops."""

    def __init__(
        self,
        spec: DataSpec,
        splits: dict[str, Batch],
        transform: BatchTransform,
        *,
        batch_size: int,
        eval_batch_size: int,
        device: torch.device | str = "cpu",
        label_noise: LabelNoise | None = None,
    ) -> None:
        self.spec = spec
        self.label_noise = label_noise
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device)
        self.transform = transform
        self._splits = {name: (x.to(self.device), y.to(self.device)) for name, (x, y) in splits.items()}

    def size(self, split: str) -> int:
        return int(self._splits[split][1].numel()) if split in self._splits else 0

    def describe(self) -> str:
        text = super().describe()
        return f"{text}; {self.label_noise.describe()}" if self.label_noise is not None else text

    def tensors(self, split: str) -> Batch:
        """The raw (un-normalised) tensors of a split, on the data device."""
        return self._splits[split]

    def train_batches(
        self, seed: int, *, skip: int = 0, rank: int = 0, world_size: int = 1, batch_size: int | None = None
    ) -> Iterator[Batch]:
        x_all, y_all = self._splits["train"]
        # Drawn on the CPU whatever the placement: the data order and the augmentation are the same stream on
        # every device (a CUDA generator is another algorithm), so placement and device stay result-neutral.
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(y_all.numel(), generator=generator).to(self.device)
        size = batch_size or self.batch_size
        for batch_index, start in enumerate(range(0, order.numel(), size)):
            index = order[start : start + size]
            # Drawn for the whole global batch, skipped or not: the random stream, and so every later batch, is
            # the same whether the run resumed mid-epoch or trains on several ranks.
            params = self.transform.sample(index.numel(), generator, self.device)
            if batch_index < skip:
                continue
            if world_size > 1:
                local = torch.arange(index.numel(), device=self.device).tensor_split(world_size)[rank]
                index, params = index[local], None if params is None else params[local]
            yield self.transform(x_all[index], params), y_all[index]

    def eval_batches(self, split: str, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        x_all, y_all = self._splits[split]
        indices = torch.arange(y_all.numel(), device=self.device)
        if world_size > 1:
            indices = indices.tensor_split(world_size)[rank]
        for start in range(0, indices.numel(), self.eval_batch_size):
            index = indices[start : start + self.eval_batch_size]
            yield self.transform(x_all[index]), y_all[index]


def keep_classes(arrays: ArrayDataset, classes: Sequence[int]) -> ArrayDataset:
    """Only the examples of ``classes``, relabelled ``0..K-1`` in the order given (e.g. MNIST 0-vs-1)."""
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError("dataset.classes", list(classes), "at least two distinct class indices")
    if max(classes) >= arrays.num_classes:
        raise ConfigError("dataset.classes", list(classes), f"class indices below {arrays.num_classes}")
    relabel = torch.full((arrays.num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(list(classes))] = torch.arange(len(classes))
    train, test = relabel[arrays.train_y] >= 0, relabel[arrays.test_y] >= 0
    return dataclasses.replace(
        arrays,
        train_x=arrays.train_x[train],
        train_y=relabel[arrays.train_y[train]],
        test_x=arrays.test_x[test],
        test_y=relabel[arrays.test_y[test]],
        num_classes=len(classes),
    )


def split_arrays(
    arrays: ArrayDataset,
    *,
    val_size: float,
    split_seed: int,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> dict[str, Batch]:
    """Hold a stratified validation set out of the training arrays; optionally keep only a stratified subset of the
    training or test examples (quick runs)."""
    holdout = holdout_count(val_size, arrays.train_y.numel())
    keep, held = stratified_split(arrays.train_y, holdout, split_seed)
    splits = {
        "train": (arrays.train_x[keep], arrays.train_y[keep]),
        "val": (arrays.train_x[held], arrays.train_y[held]),
        "test": (arrays.test_x, arrays.test_y),
    }
    if train_subset is not None and train_subset < splits["train"][1].numel():
        sub, _ = stratified_split(splits["train"][1], splits["train"][1].numel() - train_subset, split_seed + 1)
        splits["train"] = (splits["train"][0][sub], splits["train"][1][sub])
    if test_subset is not None and test_subset < splits["test"][1].numel():
        sub, _ = stratified_split(splits["test"][1], splits["test"][1].numel() - test_subset, split_seed + 2)
        splits["test"] = (splits["test"][0][sub], splits["test"][1][sub])
    return splits


def flip_labels(labels: torch.Tensor, num_classes: int, fraction: float, mode: str, seed: int) -> torch.Tensor:
    """``labels`` with exactly ``round(fraction * n)`` of them, chosen uniformly at random, redrawn: ``other`` draws
    uniformly among the ``K - 1`` other classes (every redrawn label is wrong), ``any`` uniformly among all ``K``
    (the symmetric noise of Zhang et al. 2017, a redrawn label stays right with probability ``1/K``). Sakamoto &
    Sato (paper 002, Sec. 3.1, Fig. 1) flip a fraction of the training labels; they do not say how the new class
    is drawn, so both readings are offered. Drawn on the CPU from ``seed``: the same flips on every device."""
    if mode not in ("other", "any"):
        raise ConfigError("dataset.label_noise_mode", mode, "other or any")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError("dataset.label_noise", fraction, "a fraction in [0, 1]")
    generator = torch.Generator().manual_seed(int(seed))
    count = round(fraction * labels.numel())
    chosen = torch.randperm(labels.numel(), generator=generator)[:count]
    if mode == "other":  # a shift of 1..K-1 classes: uniform over the other classes, never the true one
        shift = torch.randint(1, num_classes, (count,), generator=generator)
        new = (labels.cpu()[chosen] + shift) % num_classes
    else:
        new = torch.randint(0, num_classes, (count,), generator=generator)
    noisy = labels.cpu().clone()
    noisy[chosen] = new
    return noisy.to(labels.device)


def noisy_training_labels(
    splits: dict[str, Batch], num_classes: int, fraction: float, mode: str, split_seed: int
) -> tuple[dict[str, Batch], LabelNoise]:
    """``splits`` with the training labels flipped by :func:`flip_labels` (validation and test untouched), seeded by
    ``split_seed`` and a fixed label, so that every run seed of a sweep trains on the same noisy labels."""
    x, y = splits["train"]
    redrawn = round(fraction * y.numel())
    noisy = flip_labels(y, num_classes, fraction, mode, derive_seed(split_seed, "label_noise"))
    noise = LabelNoise(fraction, mode, redrawn, int((noisy != y).sum()), int(y.numel()))
    return {**splits, "train": (x, noisy)}, noise
