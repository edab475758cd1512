"""Pruning during training: events at given optimizer steps, each shrinking the mask to a given kept count.

Used by the methods that prune while they train (UniLTH / UniDLTH stage 2, DLTH). The mask enforcer follows every
event at once, so the next step already trains the smaller network. The current mask and the number of events done
are part of the stage checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.sparse.mask import Mask


@dataclass(frozen=True)
class PruneEvent:
    """After optimizer step ``step`` of the stage, keep ``kept`` weights."""

    index: int
    step: int
    kept: int


# (trainer, current mask, event) -> the new mask, a subset of the current one with exactly event.kept entries,
# the same on every rank (RunContext.mask agrees on it, saves and logs it)
Selector = Callable[[Any, Mask, PruneEvent], Mask]


class PruneSchedule:
    """Hook: at each event step, replace the enforced mask by ``select(trainer, mask, event)``.

    Until the last event has happened the network is not final, so ``selectable`` keeps those epochs out of
    best-validation selection.
    """

    def __init__(self, enforcer: MaskEnforcer, events: list[PruneEvent], select: Selector) -> None:
        steps = [e.step for e in events]
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError("pruning events must have distinct, increasing steps")
        self.enforcer, self.events, self.select = enforcer, list(events), select
        self.done = 0

    @property
    def mask(self) -> Mask:
        assert self.enforcer.mask is not None
        return self.enforcer.mask

    @property
    def selectable(self) -> bool:
        return self.done == len(self.events)

    def after_step(self, trainer: Any) -> None:
        while self.done < len(self.events) and self.events[self.done].step <= trainer.step:
            event = self.events[self.done]
            mask = self.select(trainer, self.mask, event)
            if mask.num_kept() != event.kept:
                raise RuntimeError(f"pruning event {event.index} kept {mask.num_kept()} weights, not {event.kept}")
            self.enforcer.set_mask(mask)
            self.enforcer.apply_to_weights()
            self.done += 1

    def log_fields(self, trainer: Any) -> dict[str, Any]:
        return {"density": self.mask.density(), "prune_events": self.done}

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "mask": self.mask.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = state["done"]
        self.enforcer.set_mask(Mask(state["mask"]).to(next(iter(self.enforcer.params.values())).device))
