"""The lottery-ticket phenomenon on real data (Frankle & Carbin 2019, Sec. 2 and Fig. 3).

LeNet-300-100 on the real MNIST test set (split 8k train / 2k test), iterative magnitude pruning with open_lth's
recipe (`experiment=mnist_lenet`) down to 6.9% of the prunable weights (12 rounds of 20%). The claims:
- at that density the winning ticket's test accuracy is within 1 point of the dense network's (mean of 3 seeds);
- on every seed it beats the random re-initialisation of the same mask by at least 1 point.

Operating point, measured over seeds 0-4 (docs/results.md): ticket - dense = -0.2 +- 0.6 points, ticket - re-init
= 3.0 +- 0.3 points. The assertions leave about 2.5 and 7 standard deviations of room, so they fail when the
phenomenon is gone (a broken mask, rewind or selection), not by chance. At 30 epochs per round the re-initialised
network catches up (94.6 against 95.1 on seed 0), which is why the recipe's 16 epochs are kept.
"""

from __future__ import annotations

import os
import statistics

import pytest

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment
from tests.conftest import REAL_MNIST

SEEDS = tuple(int(s) for s in os.environ.get("LTH_SCIENCE_SEEDS", "0,1,2").split(","))
LENET_WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_imp_winning_tickets_on_real_mnist(tmp_path):
    rows = []
    for seed in SEEDS:
        cfg = build_run_config(
            compose_config(
                [
                    "experiment=mnist_lenet",
                    f"dataset.root={REAL_MNIST}",
                    "sparsity.target=0.931",
                    "method.control_rounds=last",
                    f"seed={seed}",
                    "logger.console=none",
                    "logger.plots=false",
                ]
            )
        )
        summary = run_experiment(cfg, tmp_path / f"seed{seed}")
        dense, final = summary["rounds"][0], summary["rounds"][-1]
        overall_density = (final["kept"] + 100 * 10) / LENET_WEIGHTS  # the output layer stays dense
        rows.append(
            (
                dense["ticket"]["best_val_test_acc"],
                final["ticket"]["best_val_test_acc"],
                final["controls"]["reinit"]["best_val_test_acc"],
                final["density"],
                overall_density,
            )
        )
    print("\nseed  dense  ticket  reinit  density  density(all weights)")
    for seed, (dense, ticket, reinit, density, overall) in zip(SEEDS, rows):
        print(
            f"{seed:>4}  {100 * dense:5.2f}  {100 * ticket:6.2f}  {100 * reinit:6.2f}  {100 * density:6.2f}%  "
            f"{100 * overall:6.2f}%"
        )
    dense, ticket, reinit, density, overall = (list(column) for column in zip(*rows))
    assert max(density) <= 0.07 and max(overall) <= 0.10
    assert statistics.mean(ticket) >= statistics.mean(dense) - 0.01
    assert all(t - r >= 0.01 for t, r in zip(ticket, reinit))
