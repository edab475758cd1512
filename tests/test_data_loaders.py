"""Dataset loaders on tiny fake copies of each on-disk format, plus the real MNIST test files in tests/data/mnist."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import pickle
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lth_runner.config.schema import CifarConfig, ImageFolderConfig, MnistConfig
from lth_runner.data import build_data, cifar, mnist
from lth_runner.data.cifar import load_cifar10, load_cifar100
from lth_runner.data.imagefolder import load_imagefolder
from lth_runner.data.mnist import load_mnist
from lth_runner.errors import DataNotFoundError, UserError

REAL_MNIST = Path(__file__).parent / "data" / "mnist"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on localhost: torchvision's download_url cannot read file:// URLs (it needs the
    response's length), and a local server exercises the real download path without a network."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------- MNIST
def write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 08 <ndim>, big-endian uint32 sizes, then the uint8 values."""
    raw = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def fake_mnist(
    folder: Path, *, n_train: int = 30, n_test: int = 20, gz: bool = True, test_only: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random 28x28 digits with every class present; the first pixel of image i is i, so images are traceable."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)
        arrays[split] = (x, np.arange(n) % 10)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, (x, y) in arrays.items():
        if split == "train" and test_only:
            continue
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y)
    return {
        "train_x": arrays["train"][0],
        "train_y": arrays["train"][1],
        "test_x": arrays["t10k"][0],
        "test_y": arrays["t10k"][1],
    }


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["", "MNIST/raw"])
def test_mnist_parses_idx_files_exactly(tmp_path, gz, layout):
    written = fake_mnist(tmp_path / layout, gz=gz)
    data = load_mnist(MnistConfig(name="mnist", download=False), tmp_path)
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    for key, expected in written.items():
        actual = getattr(data, key)
        assert np.array_equal(actual.squeeze(1).numpy() if key.endswith("x") else actual.numpy(), expected)
    assert (data.num_classes, data.mean, data.std) == (10, (0.1307,), (0.3081,))


@pytest.mark.parametrize("damage", ["magic", "truncate", "gzip"])
def test_mnist_corrupt_file_names_it(tmp_path, damage):
    fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if damage == "magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + raw[4:]))
    elif damage == "truncate":
        path.write_bytes(gzip.compress(raw[:-5]))
    else:
        path.write_bytes(b"not gzip at all")
    with pytest.raises(UserError) as err:
        load_mnist(MnistConfig(name="mnist", download=False), tmp_path)
    assert str(path) in one_line(err)


def test_mnist_test_files_only_are_split_stratified_seeded_disjoint(tmp_path):
    written = fake_mnist(tmp_path, n_test=200, test_only=True)

    def split(seed: int):
        cfg = MnistConfig(name="mnist", download=False, test_holdout=50, split_seed=seed)
        with pytest.warns(UserWarning, match="split them into 150 train / 50 test"):
            return load_mnist(cfg, tmp_path)

    data = split(0)
    train_ids, test_ids = data.train_x[:, 0, 0, 0].long(), data.test_x[:, 0, 0, 0].long()
    assert (train_ids.numel(), test_ids.numel()) == (150, 50)
    assert set(train_ids.tolist()).isdisjoint(test_ids.tolist())
    assert sorted(train_ids.tolist() + test_ids.tolist()) == list(range(200))
    assert np.array_equal(data.train_y.numpy(), written["test_y"][train_ids.numpy()])
    assert torch.bincount(data.test_y, minlength=10).tolist() == [5] * 10  # 20 per class, a quarter held out
    assert torch.equal(split(0).test_x, data.test_x)
    assert not torch.equal(split(1).test_x, data.test_x)


def test_real_mnist_test_files_load_as_8000_2000():
    with pytest.warns(UserWarning, match="8000 train / 2000 test"):
        data = load_mnist(MnistConfig(name="mnist", download=False), REAL_MNIST)
    assert data.train_x.shape == (8000, 1, 28, 28) and data.test_x.shape == (2000, 1, 28, 28)
    counts = torch.bincount(data.train_y, minlength=10) + torch.bincount(data.test_y, minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the MNIST test set
    assert abs(float(data.train_x.float().mean() / 255) - 0.1325) < 0.002  # the test set is slightly brighter


def test_mnist_missing_names_root_and_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_mnist(MnistConfig(name="mnist", download=False), tmp_path)
    message = one_line(err)
    assert str(tmp_path) in message and str(tmp_path / "MNIST" / "raw") in message
    assert "dataset.root=" in message and "dataset.download=true" in message


def test_mnist_download_from_mirror(tmp_path, monkeypatch, served):
    mirror, url = served
    written = fake_mnist(mirror)
    monkeypatch.setattr(mnist, "MIRRORS", [url + "missing/", url])  # the first mirror answers 404
    monkeypatch.setattr(mnist, "RESOURCES", [(p.name, md5(p)) for p in sorted(mirror.iterdir())])
    root = tmp_path / "root"
    data = load_mnist(MnistConfig(name="mnist", download=True), root)
    assert np.array_equal(data.test_y.numpy(), written["test_y"])
    assert os.listdir(root / "MNIST") == ["raw"]
    assert sorted(os.listdir(root / "MNIST" / "raw")) == sorted(os.listdir(mirror))


def test_mnist_download_failure_leaves_nothing(tmp_path, monkeypatch, served):
    mirror, url = served
    fake_mnist(mirror)
    monkeypatch.setattr(mnist, "MIRRORS", [url])
    monkeypatch.setattr(mnist, "RESOURCES", [(p.name, "0" * 32) for p in sorted(mirror.iterdir())])
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError) as err:
        load_mnist(MnistConfig(name="mnist", download=True), root)
    assert "expected 00000000" in one_line(err)
    assert os.listdir(root / "MNIST") == []


def test_mnist_unreachable_mirror_is_data_not_found(tmp_path, monkeypatch, served):
    _, url = served
    monkeypatch.setattr(mnist, "MIRRORS", [url + "missing/"])
    with pytest.raises(DataNotFoundError) as err:
        load_mnist(MnistConfig(name="mnist", download=True), tmp_path / "root")
    assert "404" in one_line(err) and "dataset.root=" in str(err.value)


# ---------------------------------------------------------------------------------------------------- CIFAR
def fake_cifar(root: Path, variant: str, rows: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Batches pickled like the originals: dict with uint8 ``data`` (N x 3072, R then G then B planes) and labels."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, files, key, classes = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "labels",
            10,
        )
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train"], "fine_labels", 100
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names in (("train", files), ("test", ["test_batch" if variant == "cifar10" else "test"])):
        xs, ys = [], []
        for name in names:
            n = rows * (5 if variant == "cifar100" and split == "train" else 1)
            x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, classes, n)
            batch = {"batch_label": name, key: y.tolist(), "data": x.reshape(n, 3072), "filenames": [""] * n}
            if variant == "cifar100":
                batch["coarse_labels"] = (y // 5).tolist()
            with open(folder / name, "wb") as handle:
                pickle.dump(batch, handle, protocol=2)
            xs.append(x)
            ys.append(y)
        out[f"{split}_x"], out[f"{split}_y"] = np.concatenate(xs), np.concatenate(ys)
    return out


def canonical_md5s_of(monkeypatch, name: str, folder: Path) -> None:
    """Make the fake files the 'canonical' ones for this test."""
    variant = cifar.VARIANTS[name]
    own = lambda files: tuple((f, md5(folder / f)) for f, _ in files)  # noqa: E731
    monkeypatch.setitem(
        cifar.VARIANTS,
        name,
        dataclasses.replace(variant, train_files=own(variant.train_files), test_files=own(variant.test_files)),
    )


@pytest.mark.parametrize(
    "name, loader, folder",
    [("cifar10", load_cifar10, "cifar-10-batches-py"), ("cifar100", load_cifar100, "cifar-100-python")],
)
def test_cifar_parses_batches_exactly(tmp_path, monkeypatch, name, loader, folder):
    written = fake_cifar(tmp_path, name)
    canonical_md5s_of(monkeypatch, name, tmp_path / folder)
    data = loader(CifarConfig(name=name, download=False), tmp_path)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    for key, expected in written.items():
        assert np.array_equal(getattr(data, key).numpy(), expected)
    assert data.num_classes == (10 if name == "cifar10" else 100) and len(data.mean) == len(data.std) == 3


def test_cifar_checksum_mismatch_and_opt_out(tmp_path):
    written = fake_cifar(tmp_path, "cifar10")
    with pytest.raises(UserError) as err:
        load_cifar10(CifarConfig(name="cifar10", download=False), tmp_path)
    message = one_line(err)
    assert "data_batch_1" in message and "dataset.verify_checksums=false" in message
    data = load_cifar10(CifarConfig(name="cifar10", download=False, verify_checksums=False), tmp_path)
    assert np.array_equal(data.train_y.numpy(), written["train_y"])


def test_cifar_hashes_each_file_once(tmp_path, monkeypatch):
    fake_cifar(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    canonical_md5s_of(monkeypatch, "cifar10", folder)
    hashed = []
    monkeypatch.setattr(cifar, "calculate_md5", lambda path: hashed.append(path) or md5(Path(path)))
    cfg = CifarConfig(name="cifar10", download=False)
    load_cifar10(cfg, tmp_path)
    load_cifar10(cfg, tmp_path)
    assert len(hashed) == 6
    stat = (folder / "test_batch").stat()
    os.utime(folder / "test_batch", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file is rehashed
    load_cifar10(cfg, tmp_path)
    assert hashed[6:] == [str(folder / "test_batch")]


def test_cifar_missing_names_root_and_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_cifar100(CifarConfig(name="cifar100", download=False), tmp_path)
    message = one_line(err)
    assert str(tmp_path) in message and "dataset.root=" in message and "cifar-100-python" in message


def fake_archive(tmp_path: Path, served_folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    source = tmp_path / "source"
    written = fake_cifar(source, "cifar10")
    archive = served_folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, written


def test_cifar_download(tmp_path, monkeypatch, served):
    archive, written = fake_archive(tmp_path, served[0])
    canonical_md5s_of(monkeypatch, "cifar10", tmp_path / "source" / "cifar-10-batches-py")
    monkeypatch.setitem(
        cifar.VARIANTS,
        "cifar10",
        dataclasses.replace(cifar.VARIANTS["cifar10"], url=served[1] + archive.name, archive_md5=md5(archive)),
    )
    root = tmp_path / "root"
    data = load_cifar10(CifarConfig(name="cifar10", download=True), root)
    assert np.array_equal(data.test_x.numpy(), written["test_x"])
    assert os.listdir(root) == ["cifar-10-batches-py"]  # no archive, no temporary folder


def test_cifar_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch, served):
    archive, _ = fake_archive(tmp_path, served[0])
    monkeypatch.setitem(
        cifar.VARIANTS,
        "cifar10",
        dataclasses.replace(cifar.VARIANTS["cifar10"], url=served[1] + archive.name, archive_md5="0" * 32),
    )
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(CifarConfig(name="cifar10", download=True), root)
    assert "downloading it failed" in one_line(err) and "dataset.root=" in str(err.value)
    assert os.listdir(root) == []


# ---------------------------------------------------------------------------------------------- image folder
def fake_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def folder_bundle(root: Path, **kwargs):
    cfg = ImageFolderConfig(name="imagefolder", image_size=8, val_size=0.25, num_workers=0, **kwargs)
    return load_imagefolder(cfg, root, batch_size=4, eval_batch_size=3, device="cpu")


def test_imagefolder_splits_batches_and_seeded_order(tmp_path):
    fake_imagefolder(tmp_path)
    bundle = folder_bundle(tmp_path)
    assert [bundle.size(s) for s in ("train", "val", "test")] == [9, 3, 4]
    assert bundle.spec.input_shape == (3, 8, 8) and bundle.spec.num_classes == 2
    assert bundle.num_train_batches() == 3

    epoch = list(bundle.train_batches(0))
    x, y = epoch[0]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and x.device == torch.device("cpu")
    assert y.dtype == torch.int64 and [len(b[1]) for b in epoch] == [4, 4, 1]
    images = torch.cat([b[0] for b in epoch])
    assert torch.equal(images, torch.cat([b[0] for b in bundle.train_batches(0)]))
    assert not torch.equal(images, torch.cat([b[0] for b in bundle.train_batches(1)]))

    resumed = list(bundle.train_batches(0, skip=1))
    assert len(resumed) == 2 and torch.equal(resumed[0][0], epoch[1][0])
    ranks = [list(bundle.train_batches(0, rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat([ranks[0][0][0], ranks[1][0][0]]), epoch[0][0])

    val = torch.cat([b[1] for b in bundle.eval_batches("val")])
    test = torch.cat([b[1] for b in bundle.eval_batches("test")])
    assert sorted(val.tolist()) in ([0, 0, 1], [0, 1, 1]) and test.tolist() == [0, 0, 1, 1]


def test_imagefolder_missing_train_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        folder_bundle(tmp_path)
    assert str(tmp_path / "train") in one_line(err) and "dataset.root=" in str(err.value)


# ------------------------------------------------------------------------------------------------ build_data
def test_build_data_for_every_loader(tmp_path):
    fake_cifar(tmp_path / "c10", "cifar10")
    fake_cifar(tmp_path / "c100", "cifar100")
    fake_imagefolder(tmp_path / "folder")
    configs = [
        MnistConfig(name="mnist", root=str(REAL_MNIST), download=False),
        CifarConfig(name="cifar10", root=str(tmp_path / "c10"), download=False, verify_checksums=False),
        CifarConfig(name="cifar100", root=str(tmp_path / "c100"), download=False, verify_checksums=False),
        ImageFolderConfig(name="imagefolder", root=str(tmp_path / "folder"), image_size=8, val_size=2, num_workers=0),
    ]
    shapes = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagefolder": (3, 8, 8)}
    for cfg in configs:
        with pytest.warns(UserWarning) if cfg.name == "mnist" else contextlib.nullcontext():
            bundle = build_data(cfg, batch_size=4, eval_batch_size=8)
        x, y = next(iter(bundle.train_batches(0)))
        assert x.shape == (4, *shapes[cfg.name]) and x.dtype == torch.float32 and y.shape == (4,)
        x, y = next(iter(bundle.eval_batches("test")))
        assert x.shape[1:] == shapes[cfg.name] and bundle.size("val") > 0
        assert cfg.name in bundle.describe()
