"""The shape of ``summary.json``, shared by every method so that reports can read any run the same way.

Every summary has a common header (status, method, model, dataset, seed, target sparsity, scope, prunable weights),
a ``final`` block for the network the method delivers, a ``cost`` block, and method-specific sections (``rounds``
for IMP-style methods, ``stages`` / ``events`` for methods that prune while training).

``final.test_acc`` is the headline number: the test accuracy at the best validation epoch among the epochs at the
final density (``final_test_acc`` is the last epoch's).
"""

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


def final_block(result: StageResult, kept: int, total: int) -> dict[str, Any]:
    """The delivered network: its density (from the kept count) and accuracies."""
    headline = result.best_val_test_acc if result.best_val_test_acc is not None else result.final_test_acc
    return {"density": kept / total if total else 1.0, "kept": kept, "test_acc": headline, **stage_summary(result)}


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


def cost(results: list[StageResult], **found: Any) -> dict[str, Any]:
    """Training cost: stages, epochs per stage and in total, wall seconds; ``found`` adds when the ticket was found
    (e.g. ``ticket_found_epoch``)."""
    return {
        "stages": len(results),
        "epochs_total": sum(r.epochs_trained for r in results),
        "epochs_per_stage": {r.key: r.epochs_trained for r in results},
        "seconds_total": round(sum(r.seconds for r in results), 3),
        **found,
    }


def header(run: Any, total: int, *, complete: bool) -> dict[str, Any]:
    cfg = run.cfg
    return {
        "status": "complete" if complete else "running",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "target_sparsity": cfg.sparsity.target,
        "scope": cfg.sparsity.scope,
        "prunable_weights": total,
    }
