"""Pruning criteria: functions from weights (and, for data-driven criteria, a model and batches) to scores.

Higher score = more important = kept. The built-ins are declared in :mod:`lth_runner.catalog`; more criteria
(SNIP, GraSP, ...) register the same way::

    @CRITERIA.register("snip")
    def snip(weights: Mapping[str, Tensor], context: ScoreContext) -> dict[str, Tensor]: ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lth_runner.catalog import CRITERIA

Scores = dict[str, torch.Tensor]


@dataclass
class ScoreContext:
    """What a criterion may use besides the weights: a seed for random draws, the model and training batches."""

    seed: int = 0
    model: torch.nn.Module | None = None
    batches: Iterable[Any] | None = None


def magnitude(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """|w| (Han et al. 2015; Frankle & Carbin 2019): prune the smallest-magnitude weights."""
    return {name: w.detach().abs() for name, w in weights.items()}


def random(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """Uniform random scores, seeded: random pruning as a control."""
    generator = torch.Generator().manual_seed((context or ScoreContext()).seed)
    return {name: torch.rand(w.shape, generator=generator).to(w.device) for name, w in weights.items()}


def score(name: str, weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    return CRITERIA.get(name)(weights, context or ScoreContext())
