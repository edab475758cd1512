"""Shared fixtures: a data root whose generated MNIST-1D is cached across tests, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tests never start Weights & Biases unless a test asks for it (inherited by every subprocess).
os.environ["WANDB_MODE"] = "disabled"
REAL_MNIST = REPO / "tests" / "data" / "mnist"
# A small LTH-Iter run in a subprocess, long enough to interrupt: 12 optimizer steps per epoch, 3 epochs per stage,
# 3 stages (the dense network and two rounds).
SMALL_LTH_RUN = [
    "model=mlp",
    "dataset=mnist1d",
    "method=lth_iter",
    "dataset.num_samples=2000",
    "model.hidden=[64,64]",
    "trainer.epochs=3",
    "sparsity=80",
    "sparsity.rounds=2",
    "optim.lr=0.05",
    "trainer.num_threads=1",
    "logger.plots=false",
]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root shared by the whole session (MNIST-1D is generated once per configuration and cached there)."""
    return tmp_path_factory.mktemp("data")


# A run in seconds: an MLP 40-32-32-10 on 1,000 MNIST-1D examples, 2 epochs per stage (TINY_MNIST1D: at 80% sparsity;
# QUIET_MNIST1D: the method's own sparsity, no console output, no plots).
MLP_MNIST1D = [
    "model=mlp",
    "dataset=mnist1d",
    "dataset.num_samples=1000",
    "model.hidden=[32,32]",
    "trainer.epochs=2",
    "trainer.batch_size=64",
]
TINY_MNIST1D = [*MLP_MNIST1D, "sparsity=80"]
QUIET_MNIST1D = [*MLP_MNIST1D, "logger.console=none", "logger.plots=false"]


def without_timings(summary):
    """A summary (as read from summary.json) without its wall-clock fields: ``seconds`` anywhere and the cost
    block, so that an interrupted and resumed run can be compared with an uninterrupted one."""
    if isinstance(summary, dict):
        return {k: without_timings(v) for k, v in summary.items() if k not in ("seconds", "cost")}
    if isinstance(summary, list):
        return [without_timings(v) for v in summary]
    return summary


def run_cli(
    *args: str,
    cwd: Path | None = None,
    data_root: Path | None = None,
    timeout: float = 300,
    check: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``lth-run ARGS`` in a subprocess, exactly as a user would (console output as plain lines)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    if data_root is not None:
        env["LTH_DATA_ROOT"] = str(data_root)
    result = subprocess.run(
        [sys.executable, "-m", "lth_runner.train", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lth-run {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def assert_killed_run_resumes_identically(
    tmp_path: Path, overrides: list[str], kill_at: str, masks: list[str], data_root: Path
) -> None:
    """Run ``overrides`` once uninterrupted and once SIGKILLed at ``kill_at`` (``<stage key>:<step>``, through
    ``tests.fault_injection``) and resumed: the summaries (without timings) and the ``masks`` must be identical."""
    from lth_runner.sparse import Mask

    reference = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'reference'}", data_root=data_root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}", "plugins=[tests.fault_injection]",
                     data_root=data_root, env={"LTH_KILL_AT": kill_at})  # fmt: skip
    assert killed.returncode == -9
    resumed = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("reference", "run"))
    assert without_timings(first) == without_timings(second)
    for name in masks:
        assert Mask.load(tmp_path / f"run/masks/{name}.pt") == Mask.load(tmp_path / f"reference/masks/{name}.pt")
