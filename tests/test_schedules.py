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


# ------------------------------------------------------------------------------ schedules through the trainer
def _trained_rates(name, epochs, *, start_step=0, schedule_epochs=None, **scheduler):
    """The learning rate of every optimizer step of a stage of ``epochs`` epochs (4 steps per epoch)."""
    from lth_runner.config.schema import ModelConfig, OptimConfig, SyntheticConfig, TrainerConfig
    from lth_runner.data import build_data
    from lth_runner.models import build_model
    from lth_runner.training import Stage, Trainer

    data = build_data(
        SyntheticConfig(name="synthetic", shape=[4], train_size=32, test_size=8, dtype="float32", val_size=0),
        batch_size=8,
    )
    model = build_model(ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [4]}), (4,), 10, seed=0)
    optim = OptimConfig(lr=0.1, momentum=0.0, scheduler=SchedulerConfig(name=name, **scheduler))
    trainer = Trainer(model, data, optim=optim, trainer=TrainerConfig(epochs=epochs, eval_test=False))
    rates = []

    class Record:
        def after_step(self, t):
            rates.append(t.lr)

    stage = Stage("s", 0, "x", epochs, start_step=start_step, schedule_epochs=schedule_epochs)
    trainer.fit(stage, [Record()])
    return rates


@pytest.mark.parametrize("epochs", [3, 7])
def test_every_annealing_schedule_anneals_over_the_stage_it_trains(epochs):
    """A stage of any length starts at lr and ends near min_lr (cosine_restarts without a restart period is one
    cosine over the stage: the bug this guards against restarted every 10 epochs, whatever the stage length)."""
    steps = 4 * epochs
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]  # at progress t / 4 epochs
    for name in ("cosine", "cosine_restarts"):
        rates = _trained_rates(name, epochs)
        assert rates == pytest.approx(expected, rel=1e-9, abs=1e-12), name
        assert rates[-1] < 0.02 * 0.1, name  # the bug left 0.083 at 3 epochs, 0.041 at 7
    assert _trained_rates("constant", epochs) == [0.1] * steps
    # multistep milestones are epochs of the stage: x0.1 after epoch 1, x0.01 after epoch 2
    rates = _trained_rates("multistep", epochs, milestones=[1, 2])
    assert rates == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * (steps - 8))
    # warm-up over the first epoch, then the cosine over the rest of the stage
    rates = _trained_rates("cosine", epochs, warmup_epochs=1)
    assert rates[:4] == pytest.approx([0.0, 0.025, 0.05, 0.075])
    assert rates[4] == pytest.approx(0.1) and rates[-1] < 0.1 * 0.05


def test_an_explicit_restart_period_restarts_and_a_rewound_stage_continues_its_schedule():
    rates = _trained_rates("cosine_restarts", 7, restart_epochs=2)
    assert [rates[i] for i in (0, 8, 16, 24)] == pytest.approx([0.1] * 4)  # restarts at epochs 2, 4, 6
    assert rates[7] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    # a stage rewound to epoch 2 of a 6-epoch schedule continues it: its first rate is the schedule's at epoch 2
    rewound = _trained_rates("cosine", 6, start_step=8, schedule_epochs=6)
    assert len(rewound) == 16 and rewound[0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 8 / 24)))


def test_a_loaded_optimizer_state_keeps_the_stages_own_hyperparameters():
    """Momentum buffers come back with a rewind; weight decay, momentum and the rate stay the stage's (the bug:
    rewinding the optimizer made stage 2 train with the weight decay 0 of stage 1)."""
    import torch

    from lth_runner.config.schema import OptimConfig
    from lth_runner.training.optim import build_optimizer, load_state_keeping_hyperparameters

    weight = torch.nn.Parameter(torch.ones(3))
    first = build_optimizer([weight], OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.0))
    weight.grad = torch.ones(3)
    first.step()
    second = build_optimizer([weight], OptimConfig(lr=0.05, momentum=0.5, weight_decay=1e-3))
    load_state_keeping_hyperparameters(second, first.state_dict())
    group = second.param_groups[0]
    assert (group["weight_decay"], group["momentum"], group["lr"]) == (1e-3, 0.5, 0.05)
    assert torch.equal(second.state[weight]["momentum_buffer"], first.state[weight]["momentum_buffer"])
