"""Training: optimizers, learning-rate schedules, the stage loop, early stopping and rewind snapshots."""

from lth_runner.training.early_stopping import EarlyStopping
from lth_runner.training.hooks import EarlyStop, KeepSnapshots
from lth_runner.training.optim import build_optimizer
from lth_runner.training.penalty import GrowingPenalty
from lth_runner.training.pruning_events import PruneEvent, PruneSchedule
from lth_runner.training.schedules import learning_rate
from lth_runner.training.snapshots import Snapshot, SnapshotBuffer
from lth_runner.training.trainer import EnforceMask, Stage, StageResult, Trainer, hooks_with

__all__ = [
    "EarlyStop",
    "EarlyStopping",
    "EnforceMask",
    "GrowingPenalty",
    "KeepSnapshots",
    "PruneEvent",
    "PruneSchedule",
    "Snapshot",
    "SnapshotBuffer",
    "Stage",
    "StageResult",
    "Trainer",
    "build_optimizer",
    "hooks_with",
    "learning_rate",
]
