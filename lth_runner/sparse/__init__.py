"""Masks, pruning criteria, exact-count selection, round schedules and mask enforcement."""

from lth_runner.sparse.criteria import CRITERIA, ScoreContext, score
from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.sparse.mask import Mask
from lth_runner.sparse.prunable import from_sparsity_config, prunable_parameters, unwrap
from lth_runner.sparse.schedule import (
    fixed_fraction_densities,
    geometric_densities,
    kept_count,
    per_round_rate,
    remaining_fraction,
    round_counts,
    round_densities,
)
from lth_runner.sparse.select import kth_largest, prune_to_density, select_top

__all__ = [
    "CRITERIA",
    "Mask",
    "MaskEnforcer",
    "ScoreContext",
    "fixed_fraction_densities",
    "from_sparsity_config",
    "geometric_densities",
    "kept_count",
    "kth_largest",
    "per_round_rate",
    "prunable_parameters",
    "prune_to_density",
    "remaining_fraction",
    "round_counts",
    "round_densities",
    "score",
    "select_top",
    "unwrap",
]
