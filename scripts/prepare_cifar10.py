#!/usr/bin/env python3
"""Build CIFAR-10 in torchvision's layout (OUT_ROOT/cifar-10-batches-py/) from the copy in ../shared/data/cifar10.

    python scripts/prepare_cifar10.py [OUT_ROOT]     # default: data/cifar10

That copy is the 60,000 real images re-encoded as JPEG, so its md5 sums are not the canonical ones: load it with
dataset.verify_checksums=false.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "build.py"


def main() -> None:
    out_root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/cifar10")
    if not BUILD.is_file():
        sys.exit(f"{BUILD} not found: this script needs the shared offline data beside the project")
    out_root.mkdir(parents=True, exist_ok=True)
    # Built in a temporary folder and renamed, so an interrupted build leaves no half-written batches.
    tmp = tempfile.mkdtemp(prefix=".cifar10-build.", dir=out_root)
    try:
        subprocess.run([sys.executable, str(BUILD), tmp], check=True)
        shutil.rmtree(out_root / "cifar-10-batches-py", ignore_errors=True)
        os.replace(Path(tmp) / "cifar-10-batches-py", out_root / "cifar-10-batches-py")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"use it with: dataset=cifar10 dataset.root={out_root} dataset.verify_checksums=false")


if __name__ == "__main__":
    main()
