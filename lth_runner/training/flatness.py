"""The stage hooks of ``trainer.penalty``, ``trainer.sam`` and ``trainer.nvrm`` (paper 002, Sakamoto & Sato:
penalties on the unpruned weights, Eq. 1, and the flatness optimizers of Sec. 3.2 restricted to the mask), built
for every stage :meth:`lth_runner.session.RunContext.train` trains, whatever the method.

Where they go in the hook list matters, so the builder returns two lists, one to put before the method's hooks
(and mask enforcement) and one after:

- before: SAM (replaces the loss gradient by the one at ``theta + e``, which mask enforcement then masks and
  penalties then add to), NVRM's take-off (the previous noise leaves the weights right after the step);
- after: the weight penalty (added to the masked loss gradient, itself masked), NVRM (new noise on, once every other
  hook has seen the clean weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lth_runner.config.schema import TrainerConfig
from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.training.nvrm import NVRM
from lth_runner.training.sam import SAM
from lth_runner.training.weight_penalty import WeightPenalty


def flatness_enabled(cfg: TrainerConfig) -> bool:
    """Whether any of ``trainer.penalty``, ``trainer.sam``, ``trainer.nvrm`` is on."""
    return cfg.penalty.name != "none" or cfg.sam.enabled or cfg.nvrm.enabled


def flatness_hooks(
    cfg: TrainerConfig,
    model: nn.Module,
    prunable: Mapping[str, nn.Parameter],
    enforcer: MaskEnforcer | None,
    *,
    seed: int,
) -> tuple[list[Any], list[Any]]:
    """``(before, after)``: the hooks the configuration asks for, around the stage's own. ``model`` is the module
    owning the parameters; ``prunable`` its prunable weights (the enforcer's when there is one)."""
    before: list[Any] = []
    after: list[Any] = []
    if cfg.sam.enabled:
        before.append(SAM(model, rho=cfg.sam.rho, enforcer=enforcer, update_bn=cfg.sam.bn == "update"))
    if cfg.penalty.name != "none":
        after.append(
            WeightPenalty(
                prunable,
                kind=cfg.penalty.name,
                coefficient=cfg.penalty.coefficient,
                enforcer=enforcer,
                stages=cfg.penalty.stages,
            )
        )
    if cfg.nvrm.enabled:
        if cfg.nvrm.noise_on == "all":
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            params = [p for p in prunable.values() if p.requires_grad]
        nvrm = NVRM(params, std=cfg.nvrm.b, seed=seed, enforcer=enforcer)
        before.append(nvrm.take_off)
        after.append(nvrm)
    return before, after
