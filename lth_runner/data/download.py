"""Staged downloads shared by the dataset loaders: files arrive in a temporary folder beside their destination and
are moved into place only when complete, so an interrupted or failed download leaves nothing half-written."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, download_url

from lth_runner.errors import DataNotFoundError


def fetch_verified(url: str, folder: Path, filename: str, md5: str) -> Path:
    """Download ``url`` to ``folder/filename`` with torchvision and check its md5 (RuntimeError on a mismatch)."""
    download_url(url, str(folder), filename)
    path = folder / filename
    actual = calculate_md5(str(path))
    if actual != md5:
        path.unlink()
        raise RuntimeError(f"{url} has md5 {actual}, expected {md5}")
    return path


def download_staged(dest: Path, fetch: Callable[[Path], Path], context: str, hint: str) -> None:
    """Run ``fetch`` in a fresh temporary folder beside ``dest`` and move the folder it returns into ``dest``.

    Nothing lands in ``dest`` before every file is complete, so an interrupted or failed download leaves no
    partial files behind; any failure becomes a one-line :class:`DataNotFoundError` (``context`` + reason + ``hint``).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent))
    try:
        staged = fetch(tmp)
        if not dest.exists():
            os.replace(staged, dest)
        else:  # keep whatever else the user has in dest; each move is atomic
            for item in staged.iterdir():
                os.replace(item, dest / item.name)
    except (OSError, RuntimeError, tarfile.TarError) as err:
        raise DataNotFoundError(f"{context}, and downloading it failed: {one_line(err)}; {hint}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
