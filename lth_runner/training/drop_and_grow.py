"""The training hook of dynamic sparse training (SET, RigL): the mask enforced around every step, changed by a
drop-and-grow update on the steps the schedule names (:mod:`lth_runner.sparse.dst`).

Between updates it is exactly :class:`~lth_runner.training.trainer.EnforceMask` (one fused multiply of the
gradients before the step and of the weights after it), so a non-update step costs what a masked step costs. On an
update step it reads the step's gradient *before* masking it: with dense kernels the backward pass already computed
``dL/dw`` for every entry, pruned ones included, so RigL's dense gradient costs no extra pass and is looked at only
on update steps. By default the update replaces that step's weight update (RigL Algorithm 1, the ``else`` branch;
the reference code does the same), so grown connections leave the update step at exactly zero, with their momentum
and Adam moments zeroed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import torch

from lth_runner import distributed
from lth_runner.sparse.dst import UpdateSchedule, drop_and_grow, random_grow_scores
from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.sparse.mask import Mask
from lth_runner.training.trainer import EnforceMask, Trainer
from lth_runner.utils.seeding import derive_seed

GROW_RULES = ("random", "gradient")

# (update index, optimizer step, new mask, record of the update) -> None: saving and logging, the method's concern
UpdateCallback = Callable[[int, int, Mask, dict[str, Any]], None]


class DropAndGrow(EnforceMask):
    """Enforces ``enforcer``'s mask and updates it by drop-and-grow (``grow``: ``random`` = SET, ``gradient`` =
    RigL) on the steps of the schedule the stage's length gives (``delta_t``, ``alpha``, ``t_end``, ``decay``)."""

    def __init__(
        self,
        enforcer: MaskEnforcer,
        *,
        grow: str,
        delta_t: int,
        alpha: float,
        t_end: float,
        decay: str,
        replaces_step: bool = True,
        seed: int = 0,
        on_update: UpdateCallback | None = None,
    ) -> None:
        if grow not in GROW_RULES:
            raise ValueError(f"unknown grow rule {grow!r}: expected one of {GROW_RULES}")
        super().__init__(enforcer)
        self.grow, self.delta_t, self.alpha, self.t_end, self.decay = grow, delta_t, alpha, t_end, decay
        self.replaces_step, self.seed, self.on_update = replaces_step, seed, on_update
        self.schedule: UpdateSchedule | None = None
        self.updates = 0
        self.explored = {name: keep.clone() for name, keep in self.mask.items()}
        self._step = 0  # the optimizer steps taken, as of the last after_step (read at epoch ends)

    @property
    def mask(self) -> Mask:
        assert self.enforcer.mask is not None
        return self.enforcer.mask

    def schedule_for(self, total_steps: int) -> UpdateSchedule:
        return UpdateSchedule.for_training(
            total_steps, delta_t=self.delta_t, alpha=self.alpha, t_end=self.t_end, decay=self.decay
        )

    # ------------------------------------------------------------------------------------------ trainer hooks
    def before_step(self, trainer: Trainer) -> None:
        if self.schedule is None:
            assert trainer.stage is not None
            self.schedule = self.schedule_for(trainer.stage.epochs * trainer.steps_per_epoch)
        if not self.schedule.is_update(trainer.step):
            self.enforcer.apply_to_gradients()
            return
        self._update(trainer)
        if self.replaces_step:
            trainer.skip_step = True
        else:
            self.enforcer.apply_to_gradients()  # the step goes on, on the new mask

    def after_step(self, trainer: Trainer) -> None:
        self.enforcer.apply_to_weights()
        self._step = trainer.step

    @property
    def selectable(self) -> bool:
        """Epochs before the last update hold other masks than the final one: not candidates for selection."""
        return self.schedule is None or self._step > self.schedule.num_updates * self.schedule.delta_t

    def log_fields(self, trainer: Trainer) -> dict[str, Any]:
        explored = sum(int(k.sum()) for k in self.explored.values())
        return {"mask_updates": self.updates, "explored_fraction": explored / self.mask.numel()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "mask": dict(self.mask.items()),
            "explored": self.explored,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.enforcer.set_mask(Mask(state["mask"]))
        self.explored = {name: keep.to(torch.bool) for name, keep in state["explored"].items()}
        self.updates = state["updates"]

    # ------------------------------------------------------------------------------------------ the update
    def _update(self, trainer: Trainer) -> None:
        assert self.schedule is not None and trainer.optimizer is not None
        step, old = trainer.step, self.mask
        index = self.schedule.update_index(step)
        fraction = self.schedule.fraction(step)
        params = {name: self.enforcer.params[name] for name in old}
        weights = {name: p.detach() for name, p in params.items()}
        new, _, counts = drop_and_grow(weights, old, self._grow_scores(params, index), fraction)
        if distributed.world_size() > 1:
            new = new.broadcast()  # every rank computed the same; rank 0's is the one, whatever the arithmetic
        fresh = {name: new[name] & ~old[name] for name in old}
        self.enforcer.set_mask(new)
        _start_at_zero(params, fresh, trainer.optimizer)
        for name, keep in new.items():
            self.explored[name] |= keep
        self.updates = index
        if self.on_update is not None:
            record = {
                "fraction": fraction,
                "changed": sum(c.changed for c in counts.values()),
                "regrown_new": sum(c.regrown_new for c in counts.values()),
                "layers": {name: asdict(c) for name, c in counts.items()},
            }
            self.on_update(index, step, new, record)

    def _grow_scores(self, params: Mapping[str, torch.nn.Parameter], index: int) -> dict[str, torch.Tensor]:
        if self.grow == "random":
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "grow", index))
            return random_grow_scores(self.mask, generator)
        # |dL/dw| of the dense gradient; a layer this batch did not reach has none and grows by index order
        return {n: p.grad.abs() if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}


@torch.no_grad()
def _start_at_zero(
    params: Mapping[str, torch.nn.Parameter], fresh: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
    """New connections start at zero (RigL Sec. 3, "newly activated connections are initialized to zero"), with no
    momentum or Adam moments carried from before they were pruned (the reference's ``reset_momentum``)."""
    for name, param in params.items():
        grown = fresh[name]
        if not bool(grown.any()):
            continue
        param.masked_fill_(grown, 0.0)
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.masked_fill_(grown, 0.0)
