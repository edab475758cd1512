"""Penalties on a relaxed mask ``m in [0, 1]^d`` (paper 001, Fracastoro et al., "Playing the Lottery With Concave
Regularizers": the objective ``L(x; m * theta) + lambda * R(m)``), as pure functions of ``m``.

Each penalty maps a tensor of mask values to the tensor of per-entry costs ``r(m_i)``; ``R(m) = sum_i r(m_i)``
(or the mean with ``regularizer.reduction=mean``). They are registered in ``MASK_PENALTIES``
(:mod:`lth_runner.catalog`) under the names ``regularizer.name`` takes, as ``f(m, cfg) -> tensor``, so a user adds
another one (an SCAD or MCP penalty, say) with ``@MASK_PENALTIES.register("mask_scad")`` and no dispatcher edit.

- ``mask_l1``: ``r(m) = m`` (``m >= 0``, so ``R`` is ``||m||_1``): the convex case of the paper's Theorem 1, and
  Continuous Sparsification's penalty on its soft mask.
- ``mask_log``: ``r(m) = log(1 + m / eps) / log(1 + 1 / eps)``, strictly concave. The seed copy of the paper names
  "logarithmic" regularization without its formula; this is the usual log penalty, normalised
  (``regularizer.normalize=true``, the default) so an entry costs 0 at ``m = 0`` and 1 at ``m = 1``, as with l1, and
  ``lambda`` has the same scale. Its slope ``1 / ((eps + m) log(1 + 1/eps))`` is small near 1 and large near 0: small
  masks are pushed to zero harder than large ones, which is the point of concavity.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lth_runner.catalog import MASK_PENALTIES


def mask_l1(m: torch.Tensor, cfg: Any) -> torch.Tensor:
    """``r(m) = m``: the l1 norm of a non-negative mask."""
    return m


def mask_l1_slope(m: torch.Tensor, cfg: Any) -> torch.Tensor:
    return torch.ones_like(m)


def mask_log(m: torch.Tensor, cfg: Any) -> torch.Tensor:
    """``r(m) = log(1 + m/eps)``, divided by ``log(1 + 1/eps)`` when ``cfg.normalize``."""
    cost = torch.log1p(m / cfg.eps)
    return cost / math.log1p(1.0 / cfg.eps) if cfg.normalize else cost


def mask_log_slope(m: torch.Tensor, cfg: Any) -> torch.Tensor:
    """``r'(m) = 1 / (eps + m)`` (over ``log(1 + 1/eps)`` when normalised)."""
    slope = torch.reciprocal(m + cfg.eps)
    return slope.mul_(1.0 / math.log1p(1.0 / cfg.eps)) if cfg.normalize else slope


# A penalty may carry its derivative in closed form; the hook then skips autograd (``log1p`` and its backward cost
# about 20x an add-and-reciprocal on the CPU). Penalties without one are differentiated by autograd.
mask_l1.slope = mask_l1_slope  # type: ignore[attr-defined]
mask_log.slope = mask_log_slope  # type: ignore[attr-defined]


def penalty_of(name: str, cfg: Any) -> tuple[Any, Any]:
    """The per-entry cost function of the mask penalty ``name`` and its derivative (None: use autograd), with
    the penalty's settings bound."""
    penalty = MASK_PENALTIES.get(name)
    slope = getattr(penalty, "slope", None)
    return (lambda m: penalty(m, cfg)), (None if slope is None else lambda m: slope(m, cfg))
