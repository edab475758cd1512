"""The GPU check (scripts/gpu_check.sh) in its tiny CPU mode: it must keep working between the rare GPU leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

PARTS = ("epochs", "masked", "compile", "lth")


def test_tiny_gpu_check_writes_a_complete_table(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--tiny"],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.md").read_text()
    assert (out / "gpu_check_lth.log").is_file()
    assert results["mode"] == "tiny"
    assert all("error" not in results[part] for part in PARTS), {p: results[p] for p in PARTS}
    # The copy measured is this checkout, whatever else is installed.
    assert results["machine"]["lth_runner"] == str(REPO / "lth_runner")

    epochs = results["epochs"]
    for precision in ("fp32", "bf16_channels_last"):
        assert epochs[precision]["seconds"] > 0 and epochs[precision]["images_per_second"] > 0
    assert 0.05 < epochs["bf16_speedup"] < 20

    masked = results["masked"]
    assert abs(masked["density"] - 0.1) < 0.01
    assert masked["dense_ms"] > 0 and masked["masked_ms"] > 0
    assert 0.3 < masked["ratio"] < 3

    assert "skipped" in results["compile"]  # CPU: not compiled, and the table says so

    rounds = results["lth"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    densities = [r["density"] for r in rounds]
    assert densities[0] == 1.0 and all(a > b for a, b in zip(densities, densities[1:]))
    assert abs(densities[-1] - 0.512) < 0.01
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rounds)

    walls = results["wall_seconds"]
    assert all(seconds >= 0 for seconds in walls.values()) and walls["total"] > 0
    for label in (
        "dense epoch, fp32",
        "dense epoch, bf16 + channels_last",
        "bf16 + channels_last speed-up",
        "masked / dense step",
        "torch.compile | bf16 + channels_last | skipped",
        "LTH-Iter round 0 (dense)",
        "LTH-Iter round 3",
        "LTH-Iter run",
        "wall time",
    ):
        assert f"| {label}" in table, label
    assert table in proc.stdout  # printed as well as written
