"""Seed 000's four iterative methods side by side on real data (a small version of its Table 1 comparison), with
assertions that fail on wrong science.

LeNet-300-100 on the real MNIST test set split 8k/2k, 90% sparsity over psi = 5 pruning events, SGD (lr 0.1, no
momentum), 20 epochs per training run (LTH-Iter retrains 20 epochs per round; UniLTH and UniDLTH spend up to 20
epochs in stages 1 and 2 and fine-tune 10; DLTH spends 20 in all). Every method runs with its defaults.

What is asserted, each with the margin measured over seeds 0-2 beside it (docs/results.md has the table):
- every method delivers the exact kept count (global for LTH-Iter and UniLTH, per layer for DLTH's and UniDLTH's
  random sets) and the growing penalty never decreases;
- LTH-Iter's ticket beats its re-initialisation control in every seed (Frankle & Carbin's phenomenon);
- UniLTH's ticket beats a random mask with the same per-layer counts in every seed (the structure it found matters);
- DLTH and UniDLTH, whose masks are random by design, stay far above chance (10%) and do not collapse;
- UniLTH is within 2 points of LTH-Iter and UniDLTH within 2 points of DLTH on average (the acceptance of the
  default reading that trains the final mask; the literal reading of Algorithm 1 leaves UniDLTH near chance).

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
METHODS = {
    "lth_iter": ["method.controls=[reinit]", "method.control_rounds=last"],
    "unilth": ["method.controls=[random_prune]"],
    "dlth": [],
    "unidlth": [],
}
RECIPE = [
    "model=lenet_300_100",
    "dataset=mnist",
    f"dataset.root={REAL_MNIST}",
    "optim.lr=0.1",
    "optim.momentum=0.0",
    "trainer.epochs=20",
    "sparsity=90",
    "sparsity.rounds=5",
    "trainer.num_threads=1",
    "logger.console=none",
    "logger.plots=false",
]
LAYERS = {"fc1.weight": 784 * 300, "fc2.weight": 300 * 100, "fc3.weight": 100 * 10}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_lth_iter_unilth_dlth_unidlth_on_real_mnist(tmp_path):
    accuracy: dict[str, list[float]] = {m: [] for m in METHODS}
    controls: dict[str, list[float]] = {m: [] for m in METHODS}
    epochs: dict[str, list[int]] = {m: [] for m in METHODS}
    for method, extra in METHODS.items():
        for seed in SEEDS:
            out = tmp_path / f"{method}-{seed}"
            cfg = build_run_config(compose_config([*RECIPE, f"method={method}", f"seed={seed}", *extra]))
            summary = run_experiment(cfg, out)
            final = summary.final
            per_layer = sum(n - kept_count(n, 0.1) for n in LAYERS.values())  # random per-layer sets
            expected = (
                sum(LAYERS.values()) - per_layer
                if method in ("dlth", "unidlth")
                else kept_count(sum(LAYERS.values()), 0.1)
            )
            assert final.kept == expected, method
            penalties = [r["penalty"] for r in read_jsonl(out / "metrics.jsonl") if "penalty" in r]
            if method != "lth_iter":
                assert penalties and penalties == sorted(penalties), method
            accuracy[method].append(100 * final.test_acc)
            controls[method] += [100 * c.test_acc for c in final.controls.values()]
            epochs[method].append(summary.cost.epochs_total)

    print(f"\nLeNet-300-100, MNIST 8k/2k, 90% sparsity, psi=5, seeds {list(SEEDS)}")
    print("method     test acc % (mean ± sd)   per seed                 control %              epochs")
    for method in METHODS:
        values = accuracy[method]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{method:<10} {statistics.mean(values):6.2f} ± {spread:4.2f}          "
            f"{', '.join(f'{v:.2f}' for v in values):<24} {', '.join(f'{v:.2f}' for v in controls[method]):<22} "
            f"{statistics.mean(epochs[method]):.0f}"
        )

    mean = {m: statistics.mean(v) for m, v in accuracy.items()}
    # ticket - reinit, per seed: +1.80, +2.20, +2.80 points (seeds 0-2)
    assert all(t - c >= 1.0 for t, c in zip(accuracy["lth_iter"], controls["lth_iter"])), controls["lth_iter"]
    # ticket - random mask, per seed: +3.35, +2.00, +3.55 points
    assert all(t - c >= 1.0 for t, c in zip(accuracy["unilth"], controls["unilth"])), controls["unilth"]
    # chance is 10%; measured minima: DLTH 89.20, UniDLTH 89.45 (the literal Algorithm 1 gives UniDLTH 15-28)
    assert min(accuracy["dlth"]) >= 85.0 and min(accuracy["unidlth"]) >= 85.0
    # measured: UniLTH - LTH-Iter = +0.20 (95.38 vs 95.18); UniDLTH - DLTH = +0.25 (90.35 vs 90.10)
    assert mean["unilth"] >= mean["lth_iter"] - 2.0
    assert mean["unidlth"] >= mean["dlth"] - 2.0
