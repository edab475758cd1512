"""Reusable epoch-end hooks: early stopping on a validation metric, and a ring buffer of snapshots to rewind to."""

from __future__ import annotations

from typing import Any

from lth_runner.errors import UserError
from lth_runner.sparse.prunable import unwrap
from lth_runner.training.early_stopping import EarlyStopping
from lth_runner.training.snapshots import SnapshotBuffer


class EarlyStop:
    """Stop a stage when ``monitor`` (a key of the epoch record, validation loss by default) has not improved for
    ``patience`` epochs. The epoch it stopped at and the best epoch are kept in :attr:`stopper`."""

    def __init__(self, patience: int, *, monitor: str = "val_loss", min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.stopper = EarlyStopping(patience, min_delta=min_delta, mode="min" if "loss" in monitor else "max")

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> bool:
        value = record.get(self.monitor)
        if value is None:
            raise UserError(
                f"early stopping monitors {self.monitor}, which needs a validation split: set dataset.val_size > 0"
            )
        return self.stopper.update(value, record["epoch"])

    def state_dict(self) -> dict[str, Any]:
        return self.stopper.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopper.load_state_dict(state)


class KeepSnapshots:
    """Keep the state at the start of the stage and after every epoch in ``buffer`` (for rewinding k epochs back)."""

    def __init__(self, buffer: SnapshotBuffer) -> None:
        self.buffer = buffer

    def on_stage_start(self, trainer: Any) -> None:
        self._push(trainer)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self._push(trainer)

    def _push(self, trainer: Any) -> None:
        self.buffer.push(
            unwrap(trainer.model),
            epoch=trainer.step // trainer.steps_per_epoch,
            step=trainer.step,
            optimizer=trainer.optimizer,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)
