"""MNIST (LeCun, Cortes & Burges) from the idx files of http://yann.lecun.com/exdb/mnist/, read without torchvision.

The idx format: a big-endian header ``0x00 0x00 <type> <ndim>`` (type 0x08 = unsigned byte), then ``ndim``
big-endian uint32 sizes, then the values in row-major order. The four files may be gzipped or not and may sit in
the dataset root itself or in ``root/MNIST/raw`` (where ``torchvision.datasets.MNIST`` keeps them).

When only the two 10k test files are present (the real data that ships with the tests, and the only MNIST an
offline machine may have), those 10k images are split, seeded and stratified, into a training and a test set.

Downloads use torchvision's mirrors and md5 sums and are staged in a temporary folder next to the destination;
:mod:`lth_runner.data.download` does the staging.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import MNIST

from lth_runner.config.schema import MnistConfig
from lth_runner.data.base import ArrayDataset
from lth_runner.data.download import download_staged, fetch_verified, one_line
from lth_runner.data.splits import holdout_count, stratified_split
from lth_runner.errors import ConfigError, DataNotFoundError, UserError

MEAN, STD = (0.1307,), (0.3081,)
TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Module-level so tests can point them at a local file:// mirror.
MIRRORS: list[str] = list(MNIST.mirrors)
RESOURCES: list[tuple[str, str]] = list(MNIST.resources)  # (file name, md5) of the gzipped files


def load_mnist(cfg: MnistConfig, root: Path) -> ArrayDataset:
    root = Path(root).absolute()
    folders = [root, root / "MNIST" / "raw"]
    files = _find(folders, TRAIN + TEST)
    if files is None and (test_only := _find(folders, TEST)) is not None:
        return _split_test_files(cfg, *test_only)
    if files is None:
        hint = "set dataset.root=DIR to a folder holding the MNIST idx files"
        where = f"{folders[0]} and {folders[1]}"
        if not cfg.download:
            names = ", ".join(f"{name}[.gz]" for name in TRAIN + TEST)
            raise DataNotFoundError(
                f"dataset mnist not found: looked for {names} in {where}; {hint}, or dataset.download=true when online"
            )
        download_staged(folders[1], _download_files, f"dataset mnist not found in {where}", hint)
        files = _find(folders[1:], TRAIN + TEST)
    train_x, train_y, test_x, test_y = (_read_idx(path) for path in files)
    return ArrayDataset(
        _images(train_x, train_y), train_y.long(), _images(test_x, test_y), test_y.long(), 10, MEAN, STD
    )


def _split_test_files(cfg: MnistConfig, images_path: Path, labels_path: Path) -> ArrayDataset:
    x, y = _read_idx(images_path), _read_idx(labels_path)
    x, y = _images(x, y), y.long()
    try:
        holdout = holdout_count(cfg.test_holdout, y.numel())
    except ValueError:
        raise ConfigError("dataset.test_holdout", cfg.test_holdout, f"fewer than {y.numel()}") from None
    train, test = stratified_split(y, holdout, cfg.split_seed)
    warnings.warn(
        f"MNIST: only the 10k test files found in {images_path.parent}; split them into {train.numel()} train / "
        f"{test.numel()} test (dataset.test_holdout, seed dataset.split_seed={cfg.split_seed}); "
        "add the train-*-idx files for the standard 60k/10k MNIST",
        stacklevel=3,
    )
    return ArrayDataset(x[train], y[train], x[test], y[test], 10, MEAN, STD)


def _find(folders: list[Path], stems: tuple[str, ...]) -> list[Path] | None:
    """The paths of all ``stems`` (plain or .gz) in the first folder holding every one of them."""
    for folder in folders:
        found = [
            next((folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()), None) for stem in stems
        ]
        if all(found):
            return found
    return None


def _read_idx(path: Path) -> torch.Tensor:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path} is not a readable MNIST idx file ({one_line(err)}); replace or delete it") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or ndim not in (1, 3):
        raise UserError(f"{path} is not an MNIST idx file (bad magic number {raw[:4].hex()}); replace or delete it")
    header = 4 + 4 * ndim
    dims = [int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)] if len(raw) >= header else None
    if dims is None or len(raw) != header + int(np.prod(dims)):
        raise UserError(
            f"{path} is truncated or corrupt (size {len(raw)} bytes does not match its header); replace or delete it"
        )
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy())


def _images(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.dim() != 3 or y.dim() != 1 or x.shape[0] != y.shape[0] or int(y.max()) > 9:
        raise UserError(
            f"MNIST idx files do not match: images {tuple(x.shape)}, labels {tuple(y.shape)} "
            f"with maximum {int(y.max())}"
        )
    return x.unsqueeze(1)


def _download_files(folder: Path) -> Path:
    for name, md5 in RESOURCES:
        errors = []
        for mirror in MIRRORS:
            try:
                fetch_verified(mirror + name, folder, name, md5)
                break
            except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
                errors.append(f"{mirror + name}: {one_line(err)}")
        else:
            raise RuntimeError("; ".join(errors))
    return folder
