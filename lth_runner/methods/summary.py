"""The shape of ``summary.json`` shared by the pruning methods: per-round ticket and control results, totals."""

from __future__ import annotations

from typing import Any

from lth_runner.training.trainer import StageResult

_REPORTED = (
    "density",
    "best_val_test_acc",
    "final_test_acc",
    "best_val_acc",
    "best_epoch",
    "epochs_trained",
    "stopped_early",
    "seconds",
)


def stage_summary(result: StageResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in _REPORTED}


def round_entry(
    round_index: int, kept: int, total: int, ticket: StageResult, controls: dict[str, StageResult] | None = None
) -> dict[str, Any]:
    return {
        "round": round_index,
        "density": kept / total if total else 1.0,
        "kept": kept,
        "ticket": stage_summary(ticket),
        "controls": {name: stage_summary(result) for name, result in (controls or {}).items()},
    }


def cost(results: list[StageResult]) -> dict[str, Any]:
    return {
        "stages": len(results),
        "epochs_total": sum(r.epochs_trained for r in results),
        "seconds_total": round(sum(r.seconds for r in results), 3),
    }
