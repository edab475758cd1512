"""Learning-rate schedules as pure functions of training progress (in epochs, fractional within an epoch).

Because the rate depends only on progress, resuming or rewinding to epoch/iteration k needs no scheduler state:
the schedule simply continues from k.
"""

from __future__ import annotations

import bisect
import math

from lth_runner.config.schema import SchedulerConfig


def learning_rate(progress: float, total_epochs: float, base_lr: float, cfg: SchedulerConfig) -> float:
    """The learning rate after ``progress`` epochs of a ``total_epochs``-epoch schedule."""
    if cfg.granularity == "epoch":
        progress = math.floor(progress + 1e-9)
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        return base_lr * progress / cfg.warmup_epochs
    elapsed = progress - cfg.warmup_epochs
    span = max(total_epochs - cfg.warmup_epochs, 1e-12)
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "cosine":
        return cosine(min(elapsed / span, 1.0), base_lr, cfg.min_lr)
    if cfg.name == "cosine_restarts":
        position, length = restart_cycle(elapsed, cfg.restart_epochs, cfg.restart_mult)
        return cosine(position / length, base_lr, cfg.min_lr)
    if cfg.name == "multistep":
        return base_lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), progress)
    raise ValueError(f"unknown scheduler {cfg.name!r}")


def cosine(fraction: float, high: float, low: float) -> float:
    """Half-cosine from ``high`` (fraction 0) to ``low`` (fraction 1)."""
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def restart_cycle(elapsed: float, first_length: float, growth: float) -> tuple[float, float]:
    """SGDR (Loshchilov & Hutter 2017): position inside the current cycle and that cycle's length.

    Cycle i lasts ``first_length * growth**i`` epochs.
    """
    if growth == 1.0:
        return elapsed % first_length, first_length
    index = math.floor(math.log(elapsed / first_length * (growth - 1.0) + 1.0, growth))
    start = first_length * (growth**index - 1.0) / (growth - 1.0)
    length = first_length * growth**index
    if elapsed - start >= length:  # floating-point edge at a cycle boundary
        start, length = start + length, length * growth
    return elapsed - start, length
