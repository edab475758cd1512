"""Pruning criteria: functions from weights (and, for data-driven criteria, a model and batches) to scores.

Higher score = more important = kept. Later methods register more criteria (SNIP, GraSP, ...) the same way::

    @CRITERIA.register("snip")
    def snip(weights: Mapping[str, Tensor], context: ScoreContext) -> dict[str, Tensor]: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lth_runner.registry import Registry

Scores = dict[str, torch.Tensor]
CRITERIA: Registry[Callable[..., Scores]] = Registry("pruning criterion", "method.criterion")


@dataclass
class ScoreContext:
    """What a criterion may use besides the weights: a seed for random draws, the model and training batches."""

    seed: int = 0
    model: torch.nn.Module | None = None
    batches: Iterable[Any] | None = None


@CRITERIA.register("magnitude")
def magnitude(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """|w| (Han et al. 2015; Frankle & Carbin 2019): prune the smallest-magnitude weights."""
    return {name: w.detach().abs() for name, w in weights.items()}


@CRITERIA.register("random")
def random(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """Uniform random scores, seeded: random pruning as a control."""
    generator = torch.Generator().manual_seed((context or ScoreContext()).seed)
    return {name: torch.rand(w.shape, generator=generator).to(w.device) for name, w in weights.items()}


def score(name: str, weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    return CRITERIA.get(name)(weights, context or ScoreContext())
