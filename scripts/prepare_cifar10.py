#!/usr/bin/env python3
"""Build CIFAR-10 in torchvision's layout (DATA_ROOT/cifar10/cifar-10-batches-py/) from the offline copy in
../shared/data/cifar10, where lth-run looks for it by default, and record its provenance.

    python scripts/prepare_cifar10.py              # -> $LTH_DATA_ROOT/cifar10 (default data/cifar10)
    python scripts/prepare_cifar10.py --out DIR    # -> DIR/cifar-10-batches-py/

That copy holds the 60,000 real images re-encoded as JPEG, so its files' md5 sums are not the canonical ones. The
build writes ``PROVENANCE.json`` beside the batches (where the images come from, and the md5 of every file as built);
``dataset=cifar10`` accepts a copy whose files match its recorded provenance without any extra flag (a copy without
one is still checked against the canonical md5 sums), and says so in one line when it loads it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
FOLDER = "cifar-10-batches-py"
PROVENANCE = "PROVENANCE.json"


def default_out() -> Path:
    return Path(os.environ.get("LTH_DATA_ROOT", "data")) / "cifar10"


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(out_root: Path, source: Path = SHARED) -> Path:
    """Build ``out_root/cifar-10-batches-py`` from ``source`` (a folder with build.py) and its provenance file."""
    builder = source / "build.py"
    if not builder.is_file():
        raise SystemExit(f"prepare_cifar10: {builder} not found (this script needs the shared offline data)")
    out_root.mkdir(parents=True, exist_ok=True)
    # Built in a temporary folder and renamed, so an interrupted build leaves no half-written batches.
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-build.", dir=out_root))
    try:
        subprocess.run([sys.executable, str(builder), str(tmp)], check=True, stdout=subprocess.DEVNULL)
        built = tmp / FOLDER
        record = {
            "dataset": "cifar10",
            "source": "the 60,000 real CIFAR-10 images, JPEG-reconstructed (quality 75, 4:2:0), in the original "
            "order with the original labels",
            "built_from": str(source),
            "builder": "scripts/prepare_cifar10.py",
            "note": "pixels differ from the canonical files by about 8/255 RMS; accuracy is close to, not equal to, "
            "accuracy on canonical CIFAR-10",
            "md5": {p.name: md5(p) for p in sorted(built.iterdir()) if p.is_file()},
        }
        (built / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out_root / FOLDER, ignore_errors=True)
        os.replace(built, out_root / FOLDER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_root / FOLDER


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"data folder to build into (default: {default_out()})")
    parser.add_argument("--source", type=Path, default=SHARED, help=f"the offline copy (default: {SHARED})")
    args = parser.parse_args(argv)
    out = args.out or default_out()
    folder = build(out, args.source)
    print(
        f"built {folder} (with {PROVENANCE}); lth-run finds it as dataset=cifar10"
        + ("" if out == default_out() else f" dataset.root={out}")
    )


if __name__ == "__main__":
    main()
