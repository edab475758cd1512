"""Seed 000's four iterative methods side by side on real data (a small version of its Table 1 comparison).

LeNet-300-100 on the real MNIST test set split 8k/2k, 90% sparsity over psi = 5 pruning events, SGD (lr 0.1), 20
epochs per training run (LTH-Iter retrains 20 epochs per round; UniLTH, UniDLTH and DLTH spend 20 epochs in all).
Only what the methods guarantee is asserted: the exact final density and a growing, never shrinking penalty. The
accuracies are printed and recorded in docs/results.md; the methods are not tuned to this test.

    .venv/bin/python -m pytest tests/test_comparison.py -m slow -s
"""

from __future__ import annotations

import os
import statistics

import pytest

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment
from lth_runner.sparse import kept_count
from lth_runner.utils.io import read_jsonl
from tests.conftest import REAL_MNIST

SEEDS = tuple(int(s) for s in os.environ.get("LTH_COMPARISON_SEEDS", "0,1,2").split(","))
METHODS = ("lth_iter", "unilth", "dlth", "unidlth")
RECIPE = [
    "model=lenet_300_100",
    "dataset=mnist",
    f"dataset.root={REAL_MNIST}",
    "optim.lr=0.1",
    "optim.momentum=0.0",
    "trainer.epochs=20",
    "sparsity=90",
    "sparsity.rounds=5",
    "logger.console=none",
    "logger.plots=false",
]
LAYERS = {"fc1.weight": 784 * 300, "fc2.weight": 300 * 100, "fc3.weight": 100 * 10}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_lth_iter_unilth_dlth_unidlth_on_real_mnist(tmp_path):
    accuracy: dict[str, list[float]] = {m: [] for m in METHODS}
    epochs: dict[str, list[int]] = {m: [] for m in METHODS}
    for method in METHODS:
        for seed in SEEDS:
            out = tmp_path / f"{method}-{seed}"
            summary = run_experiment(
                build_run_config(compose_config([*RECIPE, f"method={method}", f"seed={seed}"])), out
            )
            final = summary["final"]
            per_layer = sum(n - kept_count(n, 0.1) for n in LAYERS.values())  # random per-layer sets
            expected = (
                sum(LAYERS.values()) - per_layer
                if method in ("dlth", "unidlth")
                else kept_count(sum(LAYERS.values()), 0.1)
            )
            assert final["kept"] == expected, method
            penalties = [
                r["penalty"] for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "epoch" and "penalty" in r
            ]
            if method != "lth_iter":
                assert penalties and penalties == sorted(penalties), method
            accuracy[method].append(100 * final["test_acc"])
            epochs[method].append(summary["cost"]["epochs_total"])
    print(f"\nLeNet-300-100, MNIST 8k/2k, 90% sparsity, psi=5, seeds {list(SEEDS)}")
    print("method     test acc % (mean ± sd)   per seed                 epochs trained")
    for method in METHODS:
        values = accuracy[method]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{method:<10} {statistics.mean(values):6.2f} ± {spread:4.2f}          "
            f"{', '.join(f'{v:.2f}' for v in values):<24} {statistics.mean(epochs[method]):.0f}"
        )
