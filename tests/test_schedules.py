"""Pure schedule functions: pruning rounds and learning rates, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from lth_runner.config.schema import SchedulerConfig
from lth_runner.sparse.schedule import (
    fixed_fraction_densities,
    geometric_densities,
    kept_count,
    per_round_rate,
    round_counts,
    round_densities,
)
from lth_runner.training.schedules import learning_rate, restart_cycle


def test_kept_count_rounds_half_up_and_clamps():
    assert kept_count(10, 0.25) == 3  # 2.5 -> 3
    assert kept_count(10, 0.24) == 2
    assert kept_count(1000, 0.1) == 100
    assert kept_count(7, 1.0) == 7 and kept_count(7, 0.0) == 0
    assert kept_count(7, 1.5) == 7 and kept_count(7, -1.0) == 0


def test_geometric_schedule_is_seed_000_eq():
    # p = 1 - r^(1/psi); r = 0.1 remaining at 90% sparsity, psi = 2 rounds: densities sqrt(0.1), 0.1
    densities = geometric_densities(0.9, 2)
    assert densities == pytest.approx([math.sqrt(0.1), 0.1])
    assert densities[-1] == 0.1  # the last round is exactly the target, no floating drift
    assert per_round_rate(0.9, 2) == pytest.approx(1 - math.sqrt(0.1))
    # every round removes the same fraction of the survivors
    ten = geometric_densities(0.5, 10)
    ratios = [b / a for a, b in zip([1.0, *ten[:-1]], ten)]
    assert ratios == pytest.approx([1 - per_round_rate(0.5, 10)] * 10)


def test_ten_round_counts_hand_computed():
    # 1000 weights to 90% sparsity in 10 rounds: kept = round(1000 * 0.1^(i/10))
    counts = round_counts(1000, geometric_densities(0.9, 10))
    assert counts == [794, 631, 501, 398, 316, 251, 200, 158, 126, 100]


def test_fixed_fraction_is_open_lth_and_lands_on_target():
    densities = fixed_fraction_densities(0.9, 0.2)
    expected = [0.8**i for i in range(1, 11)] + [0.1]  # 0.8^10 = 0.107 > 0.1, so an 11th round clamps to 0.1
    assert densities == pytest.approx(expected)
    assert round_densities(0.5, schedule="fixed_fraction", rounds=99, rate=0.5) == [0.5]
    assert fixed_fraction_densities(0.0, 0.2) == []


def test_round_counts_never_increase():
    counts = round_counts(7, [0.9, 0.8, 0.7])  # 6.3 -> 6, 5.6 -> 6, 4.9 -> 5
    assert counts == [6, 6, 5]


def lr(progress, total=100.0, base=0.1, **fields):
    return learning_rate(progress, total, base, SchedulerConfig(**fields))


def test_learning_rate_schedules():
    assert lr(37.5, name="constant") == 0.1
    assert lr(0, name="cosine") == pytest.approx(0.1)
    assert lr(50, name="cosine") == pytest.approx(0.05)
    assert lr(100, name="cosine", min_lr=0.01) == pytest.approx(0.01)
    assert lr(25, name="cosine") == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    # warm-up is linear from 0, then the schedule runs over the remaining epochs
    assert lr(1, name="cosine", warmup_epochs=4) == pytest.approx(0.025)
    assert lr(52, name="cosine", warmup_epochs=4) == pytest.approx(0.05)
    assert lr(29.9, name="multistep", milestones=[30, 60]) == pytest.approx(0.1)
    assert lr(30, name="multistep", milestones=[30, 60]) == pytest.approx(0.01)
    assert lr(75, name="multistep", milestones=[60, 30], gamma=0.5) == pytest.approx(0.025)
    # per-epoch granularity holds the rate constant within an epoch
    assert lr(50.7, name="cosine", granularity="epoch") == lr(50, name="cosine")


def test_cosine_warm_restarts_follow_sgdr():
    assert restart_cycle(25, 10, 1.0) == pytest.approx((5, 10))
    # T_0 = 10, T_mult = 2: cycles [0, 10), [10, 30), [30, 70)
    assert restart_cycle(9.5, 10, 2.0) == pytest.approx((9.5, 10))
    assert restart_cycle(10, 10, 2.0) == pytest.approx((0, 20))
    assert restart_cycle(45, 10, 2.0) == pytest.approx((15, 40))
    assert lr(20, name="cosine_restarts", restart_epochs=10) == pytest.approx(0.1)  # a restart
    assert lr(15, name="cosine_restarts", restart_epochs=10) == pytest.approx(0.05)
