"""Dynamic sparse training: per-layer densities, the drop-and-grow schedule and one drop-and-grow update.

Pure functions behind ``method=set`` (Mocanu et al., "Scalable training of artificial neural networks with adaptive
sparse connectivity inspired by network science", Nature Communications 2018) and ``method=rigl`` (Evci et al.,
"Rigging the Lottery: Making All Tickets Winners", ICML 2020), as RigL's paper defines them:

- densities (RigL Sec. 3, "Sparsity distribution"): ``uniform`` gives every layer the target density; ``erk``
  (Erdos-Renyi-Kernel) makes a layer's density proportional to ``(n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w)``
  (``(n_in + n_out) / (n_in n_out)`` for a linear layer), scaled so the whole network keeps the target; a layer
  that would exceed density 1 is kept dense and the scale is solved again (google-research/rigl
  ``sparse_utils.get_sparsities_erdos_renyi``: the layers with the largest ratio go dense one at a time);
- the schedule (RigL Eq. 1 and Algorithm 1): an update every ``delta_t`` steps while ``t < T_end``, each changing
  ``floor(f(t) * active)`` connections of every layer, ``f(t) = alpha/2 (1 + cos(pi t / T_end))``;
- an update (Algorithm 1, lines 7-9): drop the ``k`` active connections of smallest ``|w|``, then grow ``k`` among
  the connections not active after the drop (so a just-dropped connection may come back, as in the reference code,
  where it keeps its weight), by the highest grow score: uniform random for SET, ``|dL/dw|`` of the dense gradient
  for RigL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lth_runner.sparse.mask import Mask
from lth_runner.sparse.select import select_top

DISTRIBUTIONS = ("uniform", "erk")
DECAYS = ("cosine", "constant")


# ------------------------------------------------------------------------------------------------ densities
def erk_ratio(shape: torch.Size | tuple[int, ...], power: float = 1.0) -> float:
    """``sum(shape) / prod(shape)`` raised to ``power``: the Erdos-Renyi(-Kernel) density of a layer up to the
    network-wide scale (a conv's kernel sizes count, a linear layer's shape is ``(n_out, n_in)``)."""
    dims = [int(d) for d in shape]
    return (sum(dims) / math.prod(dims)) ** power


def erk_densities(
    shapes: Mapping[str, torch.Size | tuple[int, ...]], density: float, power: float = 1.0
) -> dict[str, float]:
    """Per-layer densities by Erdos-Renyi-Kernel keeping ``density`` of all weights (RigL Sec. 3)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    sizes = {name: math.prod(int(d) for d in shape) for name, shape in shapes.items()}
    ratios = {name: erk_ratio(shape, power) for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        left = budget - sum(sizes[n] for n in dense)
        if not sparse:
            break
        scale = left / sum(ratios[n] * sizes[n] for n in sparse)
        largest = max(ratios[n] for n in sparse)
        if scale * largest <= 1.0:
            break
        dense.update(n for n in sparse if ratios[n] == largest)
    return {n: 1.0 if n in dense else scale * ratios[n] for n in shapes}


def layer_densities(
    shapes: Mapping[str, torch.Size | tuple[int, ...]], density: float, distribution: str, power: float = 1.0
) -> dict[str, float]:
    """Every layer's density under ``distribution`` (``uniform`` or ``erk``)."""
    if distribution == "uniform":
        return {name: density for name in shapes}
    if distribution == "erk":
        return erk_densities(shapes, density, power)
    raise ValueError(f"unknown distribution {distribution!r}: expected one of {DISTRIBUTIONS}")


# ------------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class UpdateSchedule:
    """When the mask changes and by how much (RigL Algorithm 1 with Eq. 1): on the batch that follows ``t``
    optimizer steps, for ``t`` a positive multiple of ``delta_t`` below ``end_step`` (= ``T_end``)."""

    delta_t: int
    end_step: int
    alpha: float
    decay: str = "cosine"

    @classmethod
    def for_training(cls, total_steps: int, *, delta_t: int, alpha: float, t_end: float, decay: str) -> UpdateSchedule:
        """``T_end = floor(t_end * total_steps)``: ``t_end`` is the fraction of training that updates the mask."""
        return cls(delta_t, math.floor(t_end * total_steps + 1e-9), alpha, decay)

    def is_update(self, step: int) -> bool:
        return 0 < step < self.end_step and step % self.delta_t == 0

    def fraction(self, step: int) -> float:
        """``f(t)``: the fraction of every layer's active connections that an update at ``t`` drops and regrows."""
        if self.decay == "constant":
            return self.alpha
        if self.decay == "cosine":
            return self.alpha / 2.0 * (1.0 + math.cos(math.pi * step / self.end_step))
        raise ValueError(f"unknown decay {self.decay!r}: expected one of {DECAYS}")

    @property
    def num_updates(self) -> int:
        return max(0, (self.end_step - 1) // self.delta_t)

    def update_index(self, step: int) -> int:
        """1-based number of the update made at ``step`` (an update step)."""
        return step // self.delta_t


def update_count(active: int, fraction: float) -> int:
    """Connections an update changes in a layer with ``active`` connections: ``floor(fraction * active)`` (the
    reference's ``int(n_ones * drop_fraction)``; a hair of slack so 0.3 * 10 is 3, not 2)."""
    return max(0, min(active, math.floor(active * fraction + 1e-9)))


# --------------------------------------------------------------------------------------------------- update
@dataclass
class LayerUpdate:
    """What one update did to one layer: ``changed`` connections dropped and as many grown (the schedule's
    count), ``regrown_new`` of the grown ones were inactive before (the rest were just dropped and came back)."""

    changed: int
    regrown_new: int


def drop_and_grow(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    grow_scores: Mapping[str, torch.Tensor],
    fraction: float,
) -> tuple[Mask, dict[str, torch.Tensor], dict[str, LayerUpdate]]:
    """One update of every layer (RigL Algorithm 1, lines 7-9): drop the ``update_count(active, fraction)`` active
    connections of smallest ``|w|``, grow as many among those inactive after the drop by the largest
    ``grow_scores``. Returns the new mask (every layer keeps its count exactly), the connections that are new
    (inactive before this update: their weights and optimizer state start at zero) and per-layer counts.
    Ties keep the earlier entry, as :func:`select_top` does."""
    new_masks: dict[str, torch.Tensor] = {}
    fresh: dict[str, torch.Tensor] = {}
    counts: dict[str, LayerUpdate] = {}
    for name, keep in mask.items():
        active = int(keep.sum())
        k = update_count(active, fraction)
        if k == 0 or active == keep.numel():
            new_masks[name], fresh[name] = keep, torch.zeros_like(keep)
            counts[name] = LayerUpdate(0, 0)
            continue
        kept = select_top({name: weights[name].detach().abs()}, active - k, Mask({name: keep}))[name]
        grown = select_top({name: grow_scores[name]}, k, Mask({name: ~kept}))[name]
        new_masks[name] = kept | grown
        fresh[name] = grown & ~keep
        counts[name] = LayerUpdate(k, int(fresh[name].sum()))
    return Mask(new_masks), fresh, counts


def random_grow_scores(mask: Mask, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """SET's grow rule: uniform random scores (drawn on the CPU from ``generator``, so every device and every DDP
    rank draws the same), placed where the mask lives."""
    return {name: torch.rand(keep.shape, generator=generator).to(keep.device) for name, keep in mask.items()}
