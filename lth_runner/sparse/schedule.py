"""Pure functions for how many weights survive each pruning round.

Counts are exact integers: a density ``d`` of ``n`` weights keeps ``kept_count(n, d)`` weights (round half up), and
the last round of a schedule lands exactly on the target count.
"""

from __future__ import annotations

import math


def kept_count(total: int, density: float) -> int:
    """Number of weights kept out of ``total`` at ``density`` (round half up, clamped to [0, total])."""
    return max(0, min(total, math.floor(total * density + 0.5)))


def remaining_fraction(target_sparsity: float) -> float:
    """``1 - target`` without floating-point residue (1 - 0.9 is 0.09999999999999998 in binary floating point)."""
    return round(1.0 - target_sparsity, 12)


def geometric_densities(target_sparsity: float, rounds: int) -> list[float]:
    """Density after each of ``rounds`` rounds, each removing the same fraction of the survivors.

    UniLTH (seed 000, Sec. 3.1): ``p = 1 - r^(1/psi)`` of the survivors per round, ``r`` the remaining fraction at
    the target, so the density after round ``i`` is ``r^(i/psi)`` and the last one is exactly ``r``.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    remaining = remaining_fraction(target_sparsity)
    return [remaining ** (i / rounds) for i in range(1, rounds)] + [remaining]


def fixed_fraction_densities(target_sparsity: float, rate: float) -> list[float]:
    """Densities when every round removes ``rate`` of the survivors (open_lth's ``pruning_fraction``), until the
    target is reached; the last round is cut short so it lands on the target."""
    if not 0 < rate < 1:
        raise ValueError("rate must be in (0, 1)")
    remaining = remaining_fraction(target_sparsity)
    densities: list[float] = []
    density = 1.0
    while density > remaining + 1e-12:
        density = max(density * (1.0 - rate), remaining)
        densities.append(density)
    return densities


def per_round_rate(target_sparsity: float, rounds: int) -> float:
    """The fraction of survivors removed each round by :func:`geometric_densities`."""
    return 1.0 - remaining_fraction(target_sparsity) ** (1.0 / rounds)


def round_densities(target_sparsity: float, *, schedule: str, rounds: int, rate: float) -> list[float]:
    """Densities after each round for a sparsity config (``schedule`` is ``geometric`` or ``fixed_fraction``)."""
    if schedule == "geometric":
        return geometric_densities(target_sparsity, rounds)
    if schedule == "fixed_fraction":
        return fixed_fraction_densities(target_sparsity, rate)
    raise ValueError(f"unknown schedule {schedule!r}")


def round_counts(total: int, densities: list[float]) -> list[int]:
    """Exact kept counts per round; never increasing, and the last equals ``kept_count(total, densities[-1])``."""
    counts, previous = [], total
    for density in densities:
        previous = min(previous, kept_count(total, density))
        counts.append(previous)
    return counts
