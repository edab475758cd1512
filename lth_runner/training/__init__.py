"""Training: optimizers, learning-rate schedules, the stage loop, early stopping, rewind snapshots, and the
penalties and flatness optimizers (SAM, NVRM) restricted to the mask."""

from lth_runner.training.early_stopping import EarlyStopping
from lth_runner.training.flatness import flatness_hooks
from lth_runner.training.hooks import EarlyStop, KeepSnapshots
from lth_runner.training.nvrm import NVRM
from lth_runner.training.optim import build_optimizer
from lth_runner.training.penalty import GrowingPenalty
from lth_runner.training.pruning_events import PruneEvent, PruneSchedule
from lth_runner.training.sam import SAM
from lth_runner.training.schedules import learning_rate
from lth_runner.training.snapshots import Snapshot, SnapshotBuffer
from lth_runner.training.trainer import EnforceMask, Stage, StageResult, Trainer, hooks_with
from lth_runner.training.weight_penalty import WeightPenalty

__all__ = [
    "EarlyStop",
    "EarlyStopping",
    "EnforceMask",
    "GrowingPenalty",
    "KeepSnapshots",
    "NVRM",
    "PruneEvent",
    "PruneSchedule",
    "SAM",
    "Snapshot",
    "SnapshotBuffer",
    "Stage",
    "StageResult",
    "Trainer",
    "WeightPenalty",
    "build_optimizer",
    "flatness_hooks",
    "hooks_with",
    "learning_rate",
]
