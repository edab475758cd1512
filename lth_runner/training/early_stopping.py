"""Patience-based early stopping on a monitored quantity (validation loss by default)."""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Stops when the monitored value has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``update`` returns True on the epoch that exhausts the patience; ``best_epoch`` is the last improvement.
    """

    def __init__(self, patience: int, *, min_delta: float = 0.0, mode: str = "min") -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        if self.stopped_epoch is not None:  # the decision is final: later values change nothing
            return True
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def state_dict(self) -> dict[str, Any]:
        return dict(
            best=self.best, best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, stopped_epoch=self.stopped_epoch
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.stopped_epoch = state["bad_epochs"], state["stopped_epoch"]
