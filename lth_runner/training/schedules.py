"""Learning-rate schedules as pure functions of training progress (in epochs, fractional within an epoch).

Because the rate depends only on progress, resuming or rewinding to epoch/iteration k needs no scheduler state:
the schedule simply continues from k. A schedule is registered in ``SCHEDULES`` (:mod:`lth_runner.catalog`) under
the name ``optim.scheduler.name`` takes, as ``f(elapsed, span, base_lr, cfg) -> lr``: ``elapsed`` epochs after the
warm-up of a stage whose schedule spans ``span`` epochs after the warm-up.

Every schedule runs over the stage it trains: a stage of ``E`` epochs (its ``schedule_epochs``: a fine-tune, a
round, a pruning phase) starts at ``lr`` and the annealing schedules end at ``min_lr`` when it ends.
``cosine_restarts`` restarts every ``restart_epochs`` (T_0, growing by ``restart_mult``) when that is set, and is a
single cosine over the stage when it is null (SGDR with T_0 = the stage length, i.e. ``CosineAnnealingLR``).
"""

from __future__ import annotations

import bisect
import math

from lth_runner.catalog import SCHEDULES
from lth_runner.config.schema import SchedulerConfig


def learning_rate(progress: float, total_epochs: float, base_lr: float, cfg: SchedulerConfig) -> float:
    """The learning rate after ``progress`` epochs of a ``total_epochs``-epoch schedule."""
    if cfg.granularity == "epoch":
        progress = math.floor(progress + 1e-9)
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        return base_lr * progress / cfg.warmup_epochs
    elapsed = progress - cfg.warmup_epochs
    span = max(total_epochs - cfg.warmup_epochs, 1e-12)
    return SCHEDULES.get(cfg.name)(elapsed, span, base_lr, cfg)


def constant(elapsed: float, span: float, base_lr: float, cfg: SchedulerConfig) -> float:
    return base_lr


def cosine(elapsed: float, span: float, base_lr: float, cfg: SchedulerConfig) -> float:
    """One half-cosine from ``base_lr`` to ``min_lr`` over the stage (Loshchilov & Hutter's annealing)."""
    return half_cosine(min(elapsed / span, 1.0), base_lr, cfg.min_lr)


def cosine_restarts(elapsed: float, span: float, base_lr: float, cfg: SchedulerConfig) -> float:
    """SGDR (Loshchilov & Hutter 2017): cycles of ``restart_epochs`` growing by ``restart_mult``; without a
    restart period, one cycle as long as the stage."""
    first = cfg.restart_epochs if cfg.restart_epochs is not None else span
    position, length = restart_cycle(elapsed, first, cfg.restart_mult)
    return half_cosine(position / length, base_lr, cfg.min_lr)


def multistep(elapsed: float, span: float, base_lr: float, cfg: SchedulerConfig) -> float:
    """``base_lr * gamma^k`` after the k-th milestone (epochs from the stage start, warm-up included)."""
    return base_lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), elapsed + cfg.warmup_epochs)


def half_cosine(fraction: float, high: float, low: float) -> float:
    """Half-cosine from ``high`` (fraction 0) to ``low`` (fraction 1)."""
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def restart_cycle(elapsed: float, first_length: float, growth: float) -> tuple[float, float]:
    """SGDR: position inside the current cycle and that cycle's length; cycle i lasts ``first_length * growth**i``
    epochs."""
    if growth == 1.0:
        return elapsed % first_length, first_length
    index = math.floor(math.log(elapsed / first_length * (growth - 1.0) + 1.0, growth))
    start = first_length * (growth**index - 1.0) / (growth - 1.0)
    length = first_length * growth**index
    if elapsed - start >= length:  # floating-point edge at a cycle boundary
        start, length = start + length, length * growth
    return elapsed - start, length
