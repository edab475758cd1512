"""Controls: what a ticket is compared with at the same density (Frankle & Carbin 2019, Sec. 2, Figs. 3-4).

Every method accepts ``method.controls``; after it has its ticket (IMP: after every round, or the last with
``method.control_rounds=last``), each named control trains ``trainer.epochs`` epochs with the ticket's budget:

- ``reinit``: the ticket's mask on a fresh random initialisation (its own seed), from step 0: does the ticket's
  initialisation matter, or only its structure?
- ``random_prune``: a uniformly random mask with the ticket's exact per-layer kept counts, on the method's start
  weights (IMP: the rewind point and its step; the other methods: the initialisation, step 0): does the structure
  matter?

A control is a function ``control(run, start, mask, round_index) -> (mask, weights, start_step)``
registered in ``CONTROLS`` (:mod:`lth_runner.catalog`): it says which mask and weights the control trains from;
:func:`train_controls` does the training, saving and bookkeeping for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lth_runner.catalog import CONTROLS
from lth_runner.sparse import Mask, MaskEnforcer
from lth_runner.sparse.prunable import unwrap
from lth_runner.training.trainer import Stage, StageResult


@dataclass(frozen=True)
class ControlStart:
    """The weights (and optimizer step) a method's tickets start from: the rewind point of IMP, else theta_0."""

    state: dict[str, torch.Tensor]
    step: int = 0


def reinit(run: Any, start: ControlStart, mask: Mask, round_index: int) -> tuple[Mask, dict[str, torch.Tensor], int]:
    """The ticket's mask on a fresh initialisation, trained from step 0."""
    return mask, unwrap(run.new_model("reinit", round_index)).state_dict(), 0


def random_prune(
    run: Any, start: ControlStart, mask: Mask, round_index: int
) -> tuple[Mask, dict[str, torch.Tensor], int]:
    """A random mask with the ticket's per-layer counts (saved as ``masks/round_XX_random.pt``), on the start
    weights."""
    name = f"round_{round_index:02d}_random"
    random_mask = run.mask(name, lambda: Mask.random_like(mask, generator=run.generator("random_prune", round_index)))
    return random_mask, start.state, start.step


def train_controls(
    run: Any,
    names: list[str],
    *,
    round_index: int,
    mask: Mask,
    model: nn.Module,
    enforcer: MaskEnforcer,
    start: ControlStart,
) -> dict[str, StageResult]:
    """Train every control of ``names`` at ``mask``'s density (stages ``roundXX/<control>``); the model and the
    enforcer are left on ``mask`` afterwards (with the control's weights)."""
    results: dict[str, StageResult] = {}
    epochs = run.cfg.trainer.epochs
    for name in names:
        key = f"round{round_index:02d}/{name}"
        control_mask, weights, step = CONTROLS.get(name)(run, start, mask, round_index)
        if run.completed(key) is None:
            unwrap(model).load_state_dict(weights)
        enforcer.set_mask(control_mask)
        stage = Stage(key, round_index, name, epochs, start_step=step, density=control_mask.density())
        results[name] = run.train(stage, model, enforcer)
    enforcer.set_mask(mask)
    return results


def controls_from_init(
    run: Any,
    *,
    round_index: int,
    mask: Mask,
    model: nn.Module,
    enforcer: MaskEnforcer,
    init_state: dict[str, torch.Tensor],
    results: list[StageResult],
) -> dict[str, StageResult]:
    """The run's ``method.controls`` at its final ``mask``, from the initialisation (step 0), for the methods that
    deliver one mask; their results are appended to ``results``. Nothing when no control is asked for."""
    names = run.cfg.method.controls
    if not names:
        return {}
    controls = train_controls(
        run, names, round_index=round_index, mask=mask, model=model, enforcer=enforcer,
        start=ControlStart(init_state, 0),
    )  # fmt: skip
    results.extend(controls.values())
    return controls
