"""The lottery-ticket phenomenon on real data (Frankle & Carbin 2019, Sec. 2 and Fig. 3).

LeNet-300-100 on the real MNIST test set (split 8k train / 2k test), iterative magnitude pruning with open_lth's
recipe (`experiment=mnist_lenet`) down to 6.9% of the prunable weights (12 rounds of 20%; 7.25% of all weights, the
output layer staying dense), five seeds. The claims:
- at that density the winning tickets' mean test accuracy is within 1 point of the dense networks' mean;
- on every seed the ticket beats the random re-initialisation of its mask, by at least 1 point on average.

Measured at this operating point (docs/results.md): ticket - dense = -0.43 +- 0.73 points per seed (so the mean of
five has about 1.7 standard errors of room), ticket - re-init = 2.5 +- 0.65 (about 5 standard errors of room for the
mean, 3.8 standard deviations for each seed). Per seed, "within 1 point" would not be robust: best-validation
selection on 800 examples and a 2k test set give the dense accuracy alone a spread of 0.5 points. At 30 epochs per
round the re-initialised network catches up (94.6 against 95.1 on seed 0), and with F&C's Adam recipe the gap to
re-initialisation narrows to about one point: both are why the open_lth recipe's 16 epochs of SGD are kept.
"""

from __future__ import annotations

import os
import statistics

import pytest

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment
from tests.conftest import REAL_MNIST

SEEDS = tuple(int(s) for s in os.environ.get("LTH_SCIENCE_SEEDS", "0,1,2,3,4").split(","))
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
                    "method.controls=[reinit]",
                    "method.control_rounds=last",
                    f"seed={seed}",
                    "logger.console=none",
                    "logger.plots=false",
                ]
            )
        )
        summary = run_experiment(cfg, tmp_path / f"seed{seed}").to_dict()
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
    assert all(t > r for t, r in zip(ticket, reinit))
    assert statistics.mean(ticket) - statistics.mean(reinit) >= 0.01


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_magnitude_initialised_search_beats_edge_popup_from_random_scores_at_equal_epochs(tmp_path):
    """Lottery Jackpots' claim (paper 004, Table 7 and Sec. 3.2) at small scale: on a pre-trained LeNet-300-100
    (real MNIST 8k/2k, 10 epochs, SGD 0.1 momentum 0.9 cosine, wd 5e-4), at 95% sparsity with the same per-layer
    budgets (one global magnitude threshold, classifier dense) and one search epoch, SR-popup (magnitude-
    initialised relaxed mask with the restriction) beats edge-popup from Kaiming-uniform scores in every seed, and
    its mask stays close to the magnitude mask while edge-popup's does not."""
    recipe = [
        "model=lenet_300_100", "dataset=mnist", f"dataset.root={REAL_MNIST}", "optim.lr=0.1", "optim.momentum=0.9",
        "optim.scheduler.name=cosine", "optim.weight_decay=5e-4", "trainer.epochs=10", "sparsity=95",
        "method.search_epochs=1", "method.pretrained=auto", "method.layer_budget=global_magnitude",
        "method.dense_classifier=true", "logger.console=none", "logger.plots=false", "trainer.num_threads=1",
        f"paths.data_root={tmp_path / 'data'}",
    ]  # fmt: skip
    accuracy: dict[str, list[float]] = {"edge_popup": [], "sr_popup": []}
    overlap: dict[str, list[float]] = {"edge_popup": [], "sr_popup": []}
    for seed in (0, 1, 2):
        for method in accuracy:
            cfg = build_run_config(compose_config([*recipe, f"method={method}", f"seed={seed}"]))
            summary = run_experiment(cfg, tmp_path / f"{method}-{seed}").to_dict()
            accuracy[method].append(100 * summary["final"]["test_acc"])
            overlap[method].append(summary["details"]["search"]["overlap_with_magnitude"]["end"])
    print(accuracy, overlap)
    # SR-popup - edge-popup per seed, measured (seeds 0-2): +5.15, +4.30, +2.50 points (93.25/93.65/93.30 against
    # 88.10/89.35/90.80); at 3 search epochs the margins shrink to +2.85, +1.85, +0.90 (docs/results.md)
    assert all(s - e >= 1.0 for s, e in zip(accuracy["sr_popup"], accuracy["edge_popup"]))
    # overlap with the magnitude mask, measured: SR-popup 0.966-0.974, edge-popup 0.162-0.170
    assert min(overlap["sr_popup"]) >= 0.93 and max(overlap["edge_popup"]) <= 0.3


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_a_learned_8_pixel_mask_separates_4_from_9_far_better_than_a_random_one(tmp_path):
    """Paper 001 Figs. 3-4 (``experiment=concave/mnist01_pixels``) on the harder pair 4-vs-9 (0-vs-1 is at its
    ceiling with a single pixel): logistic regression, the log-penalised relaxed mask thresholded to exactly 8
    pixels, retrained from the initialisation; the control is 8 random pixels trained the same way.

    Measured, seeds 0-2: learned 85.43 / 87.44 / 85.43%, random 57.54 / 60.30 / 62.81% (per-seed margins 27.9, 27.1,
    22.6 points). Asserted: learned >= 80% and at least 10 points above random on every seed."""
    for seed in (0, 1, 2):
        cfg = build_run_config(compose_config([
            "experiment=concave/mnist01_pixels", f"dataset.root={REAL_MNIST}", "dataset.classes=[4,9]",
            "regularizer.coefficient=3e-3", "method.controls=[random_prune]", f"seed={seed}",
            "logger.console=none", "logger.plots=false",
        ]))  # fmt: skip
        final = run_experiment(cfg, tmp_path / f"seed{seed}").to_dict()["rounds"][-1]
        learned, random = final["ticket"]["test_acc"], final["controls"]["random_prune"]["test_acc"]
        assert final["kept"] == 8
        assert learned >= 0.80 and learned - random >= 0.10, (seed, learned, random)
