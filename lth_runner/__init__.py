"""lth-runner: lottery-ticket and sparse-training experiments, as a library and as the ``lth-run`` command.

Names are imported lazily so that the command line answers ``--help`` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "lth_runner.config.schema",
    "build_run_config": "lth_runner.config.validate",
    "run_experiment": "lth_runner.session",
    "RunContext": "lth_runner.session",
    "Summary": "lth_runner.summary",
    "MODELS": "lth_runner.catalog",
    "DATASETS": "lth_runner.catalog",
    "METHODS": "lth_runner.catalog",
    "CRITERIA": "lth_runner.catalog",
    "OPTIMIZERS": "lth_runner.catalog",
    "SCHEDULES": "lth_runner.catalog",
    "LAWS": "lth_runner.catalog",
    "CONTROLS": "lth_runner.catalog",
    "build_model": "lth_runner.models",
    "build_data": "lth_runner.data",
    "Mask": "lth_runner.sparse",
    "MaskEnforcer": "lth_runner.sparse",
    "prunable_parameters": "lth_runner.sparse",
    "prune_to_density": "lth_runner.sparse",
    "Trainer": "lth_runner.training",
    "Stage": "lth_runner.training",
    "EarlyStopping": "lth_runner.training",
    "SnapshotBuffer": "lth_runner.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lth_runner' has no attribute {name!r}")
