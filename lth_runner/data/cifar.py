"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the python-pickle batches that ``torchvision.datasets.CIFAR10``
downloads: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}`` and ``root/cifar-100-python/{train,test}``.

Each batch is a pickled dict whose ``data`` is a uint8 array of N rows of 3072 values (the 1024 red, then green,
then blue pixels of a 32x32 image, row-major) and whose labels are ``labels`` (CIFAR-10) or ``fine_labels``
(CIFAR-100); a row reshapes directly to 3 x 32 x 32, so no PIL round trip is needed.

File md5 sums are checked against torchvision's lists, once per file per process (keyed by path, size and mtime).
A copy built by ``scripts/prepare_cifar10.py`` (the JPEG-reconstructed offline CIFAR-10) is not canonical: it
carries ``PROVENANCE.json`` beside the batches, recording where the images come from and the md5 of every file as
built. Such a copy is accepted when every file matches its record (a one-line warning says which copy is used); a
folder without a record is held to the canonical sums; ``dataset.verify_checksums=false`` skips both checks.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import calculate_md5, extract_archive

from lth_runner.config.schema import CifarConfig
from lth_runner.data.base import ArrayDataset
from lth_runner.data.download import download_staged, fetch_verified, one_line
from lth_runner.errors import DataNotFoundError, UserError


@dataclass(frozen=True)
class CifarVariant:
    """Where one CIFAR variant lives and how it is read; the download source is a field so tests can replace it."""

    name: str
    folder: str  # torchvision's base_folder
    train_files: tuple[tuple[str, str], ...]  # (file name, md5)
    test_files: tuple[tuple[str, str], ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str
    archive: str
    archive_md5: str


def _variant(name: str, source: type, label_key: str, num_classes: int, mean: tuple, std: tuple) -> CifarVariant:
    return CifarVariant(
        name,
        source.base_folder,
        tuple(map(tuple, source.train_list)),
        tuple(map(tuple, source.test_list)),
        label_key,
        num_classes,
        mean,
        std,
        source.url,
        source.filename,
        source.tgz_md5,
    )


VARIANTS: dict[str, CifarVariant] = {
    "cifar10": _variant("cifar10", CIFAR10, "labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _variant("cifar100", CIFAR100, "fine_labels", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# (absolute path, size, mtime_ns) -> md5; hashing CIFAR-10's 180 MB costs about a second, so once per process.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def load_cifar10(cfg: CifarConfig, root: Path) -> ArrayDataset:
    return load_cifar(cfg, root, VARIANTS["cifar10"])


def load_cifar100(cfg: CifarConfig, root: Path) -> ArrayDataset:
    return load_cifar(cfg, root, VARIANTS["cifar100"])


def load_cifar(cfg: CifarConfig, root: Path, variant: CifarVariant) -> ArrayDataset:
    root = Path(root).absolute()
    folder = _locate(root, variant)
    if folder is None:
        hint = f"set dataset.root=DIR to a folder holding {variant.folder}/ (torchvision's layout)"
        if variant.name == "cifar10":
            hint += " (offline: python scripts/prepare_cifar10.py builds one here from ../shared/data/cifar10)"
        if not cfg.download:
            names = ", ".join(name for name, _ in variant.train_files + variant.test_files)
            raise DataNotFoundError(
                f"dataset {variant.name} not found: looked for {names} in {root / variant.folder} "
                f"and {root}; {hint}, or dataset.download=true when online"
            )
        download_staged(
            root / variant.folder,
            lambda tmp: _download(variant, tmp),
            f"dataset {variant.name} not found in {root}",
            hint,
        )
        folder = root / variant.folder
    if cfg.verify_checksums:
        verify(folder, variant)
    train_x, train_y = _read_batches(folder, variant.train_files, variant.label_key)
    test_x, test_y = _read_batches(folder, variant.test_files, variant.label_key)
    return ArrayDataset(train_x, train_y, test_x, test_y, variant.num_classes, variant.mean, variant.std)


def _locate(root: Path, variant: CifarVariant) -> Path | None:
    """``root/<folder>`` (torchvision's layout) or ``root`` itself, whichever holds every batch file."""
    for folder in (root / variant.folder, root):
        if all((folder / name).is_file() for name, _ in variant.train_files + variant.test_files):
            return folder
    return None


def _download(variant: CifarVariant, tmp: Path) -> Path:
    archive = fetch_verified(variant.url, tmp, variant.archive, variant.archive_md5)
    extract_archive(str(archive), str(tmp))
    staged = tmp / variant.folder
    if not staged.is_dir():
        raise RuntimeError(f"{variant.url} does not contain {variant.folder}/")
    return staged


PROVENANCE = "PROVENANCE.json"


def verify(folder: Path, variant: CifarVariant) -> None:
    """Every batch file's md5: the canonical one, or the one recorded in the folder's ``PROVENANCE.json``."""
    names = [name for name, _ in variant.train_files + variant.test_files]
    record = _provenance(folder)
    if record is None:
        for name, md5 in variant.train_files + variant.test_files:
            _check_md5(folder / name, md5, variant.name, "the canonical md5")
        return
    recorded = record.get("md5") or {}
    for name in names:
        _check_md5(folder / name, recorded.get(name, "?"), variant.name, f"the md5 recorded in {folder / PROVENANCE}")
    warnings.warn(
        f"dataset {variant.name}: using the copy in {folder} ({record.get('source', 'not canonical')}; "
        f"{record.get('note', 'see ' + PROVENANCE)})",
        UserWarning,
        stacklevel=3,
    )


def _provenance(folder: Path) -> dict | None:
    path = folder / PROVENANCE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({one_line(err)}); rebuild the copy or remove the file") from None
    return record if isinstance(record, dict) else {}


def _check_md5(path: Path, expected: str, dataset: str, what: str) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        _MD5_CACHE[key] = calculate_md5(str(path))
    if _MD5_CACHE[key] != expected:
        raise UserError(
            f"dataset {dataset}: {path} has md5 {_MD5_CACHE[key]}, not {what} ({expected}): the file was changed or "
            "the copy is not canonical (a re-encoded copy: build it with scripts/prepare_cifar10.py, which records "
            "its provenance, or set dataset.verify_checksums=false)"
        )


def _read_batches(folder: Path, files: tuple[tuple[str, str], ...], label_key: str) -> tuple[torch.Tensor, ...]:
    xs, ys = [], []
    for name, _ in files:
        path = folder / name
        try:
            with open(path, "rb") as handle:
                # The canonical batches are Python 2 pickles; latin1 turns their byte strings into str keys.
                batch = pickle.load(handle, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
            reason = f"{type(err).__name__}: {one_line(err)}"
            raise UserError(f"{path} is not a readable CIFAR batch ({reason}); replace it") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
            raise UserError(f"{path} is not a CIFAR batch: data {data.shape}, labels {labels.shape}; replace it")
        xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        ys.append(torch.from_numpy(labels))
    return torch.cat(xs), torch.cat(ys)
