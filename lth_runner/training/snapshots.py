"""State snapshots for rewinding: copies of the model (weights and buffers such as BatchNorm statistics),
optionally the optimizer, taken at epoch or iteration boundaries."""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Snapshot:
    """Model (and optionally optimizer) state at training progress ``epoch`` (after ``step`` optimizer steps)."""

    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None

    @classmethod
    def take(
        cls, model: nn.Module, *, epoch: int, step: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Snapshot:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(epoch, step, state, copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        model.load_state_dict(self.model)
        if optimizer is not None and self.optimizer is not None:
            optimizer.load_state_dict(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return dict(epoch=self.epoch, step=self.step, model=self.model, optimizer=self.optimizer)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Snapshot:
        return cls(state["epoch"], state["step"], state["model"], state.get("optimizer"))


class SnapshotBuffer:
    """A ring buffer of the last ``capacity`` epoch-end snapshots, for rewinding k epochs back (UniLTH)."""

    def __init__(self, capacity: int, *, include_optimizer: bool = False) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity, self.include_optimizer = capacity, include_optimizer
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()

    def push(self, model: nn.Module, *, epoch: int, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        self._snapshots[epoch] = Snapshot.take(
            model, epoch=epoch, step=step, optimizer=optimizer if self.include_optimizer else None
        )
        while len(self._snapshots) > self.capacity:
            self._snapshots.popitem(last=False)

    def at(self, epoch: int) -> Snapshot:
        if epoch not in self._snapshots:
            raise KeyError(f"no snapshot at epoch {epoch}; held: {list(self._snapshots)}")
        return self._snapshots[epoch]

    def back(self, epochs: int) -> Snapshot:
        """The snapshot ``epochs`` before the newest one."""
        held = list(self._snapshots)
        if not 0 <= epochs < len(held):
            raise KeyError(f"cannot go back {epochs} epochs with {len(held)} snapshots held")
        return self._snapshots[held[-1 - epochs]]

    def epochs(self) -> list[int]:
        return list(self._snapshots)

    def __len__(self) -> int:
        return len(self._snapshots)

    def state_dict(self) -> dict[str, Any]:
        return dict(
            capacity=self.capacity,
            include_optimizer=self.include_optimizer,
            snapshots=[s.state_dict() for s in self._snapshots.values()],
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._snapshots = OrderedDict((s["epoch"], Snapshot.from_state_dict(s)) for s in state["snapshots"])
