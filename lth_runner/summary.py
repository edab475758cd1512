"""The shape of ``summary.json``: one typed summary for every method, built by :func:`build_summary`.

Every summary has the same fields: a header (status, method, model, dataset, seed, target sparsity, scope,
prunable weights), ``final`` (the network the method delivers), ``rounds`` (one entry per density the method
trained at: IMP rounds, DLTH cycles; round 0 is dense), ``stages`` (every training stage by key), ``cost`` and
``details`` (what only this method has: UniLTH's stage 1 and events, DLTH's cycles, EB's detection, ...).

The reported accuracy follows one rule everywhere (see :class:`lth_runner.training.trainer.StageResult`):
``test_acc`` is the test accuracy at the epoch of best validation accuracy among the epochs trained at the final
mask (``selection="best_val"``), or the last epoch's without a validation split (``selection="last_epoch"``);
``final_test_acc`` is the last epoch's. Both are always present.

This module imports no torch: the report reads summaries with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "lth_runner.summary/2"


@dataclass
class StageSummary:
    """One training stage's reported figures."""

    key: str = ""
    phase: str = ""
    density: float = 1.0
    test_acc: float | None = None
    selection: str | None = None
    best_val_test_acc: float | None = None
    final_test_acc: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    epochs_trained: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    @classmethod
    def of(cls, result: Any) -> StageSummary:
        """From a :class:`~lth_runner.training.trainer.StageResult` (or anything with its fields)."""
        return cls(**{f.name: getattr(result, f.name) for f in dataclasses.fields(cls)})


@dataclass
class RoundSummary:
    """The network of one round (one density): the ticket and the controls trained at that density."""

    round: int
    density: float
    kept: int
    ticket: StageSummary
    controls: dict[str, StageSummary] = field(default_factory=dict)


@dataclass
class FinalSummary(StageSummary):
    """The delivered network: its round, exact kept count and density, its figures, and its controls."""

    round: int = 0
    kept: int = 0
    controls: dict[str, StageSummary] = field(default_factory=dict)


@dataclass
class Cost:
    stages: int = 0
    epochs_total: int = 0
    epochs_per_stage: dict[str, int] = field(default_factory=dict)
    seconds_total: float = 0.0
    ticket_found_epoch: int | None = None  # when the method settled its ticket (EB detection, UniLTH's stop)


@dataclass
class Summary:
    status: str
    method: str
    model: str
    dataset: str
    seed: int
    target_sparsity: float
    scope: str
    prunable_weights: int
    final: FinalSummary | None = None
    rounds: list[RoundSummary] = field(default_factory=list)
    stages: dict[str, StageSummary] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    details: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """Read a ``summary.json`` (missing fields take their defaults; unknown ones are ignored)."""
        values = _known(cls, data)
        values["final"] = _final(data.get("final"))
        values["rounds"] = [_round(r) for r in data.get("rounds") or [] if isinstance(r, Mapping)]
        values["stages"] = {k: _stage(v) for k, v in (data.get("stages") or {}).items() if isinstance(v, Mapping)}
        values["cost"] = Cost(**_known(Cost, data.get("cost") or {}))
        values["details"] = dict(data.get("details") or {})
        for name, default in (("status", "unknown"), ("method", "unknown"), ("model", "unknown"), ("dataset", "")):
            values.setdefault(name, default)
        values.setdefault("seed", 0)
        values.setdefault("target_sparsity", 0.0)
        values.setdefault("scope", "")
        values.setdefault("prunable_weights", 0)
        return cls(**values)


def round_summary(index: int, kept: int, total: int, ticket: Any, controls: Mapping[str, Any] | None = None):
    """A :class:`RoundSummary` from stage results (the ticket's and each control's)."""
    return RoundSummary(
        round=index,
        density=kept / total if total else 1.0,
        kept=kept,
        ticket=StageSummary.of(ticket),
        controls={name: StageSummary.of(result) for name, result in (controls or {}).items()},
    )


def build_summary(
    header: Mapping[str, Any],
    *,
    results: Iterable[Any],
    final: Any | None,
    kept: int,
    round_index: int,
    rounds: Iterable[RoundSummary] = (),
    controls: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    complete: bool,
    ticket_found_epoch: int | None = None,
) -> Summary:
    """The summary of a run: ``header`` (method, model, ... from the configuration), every stage ``result`` so far,
    the delivered network's stage result ``final`` (None before the first stage ends) with its ``kept`` count and
    round, the ``rounds`` trained, the controls of the final network and the method's ``details``."""
    results = list(results)
    total = int(header["prunable_weights"])
    final_summary = None
    if final is not None:
        final_summary = FinalSummary(
            **dataclasses.asdict(StageSummary.of(final)),
            round=round_index,
            kept=kept,
            controls={name: StageSummary.of(r) for name, r in (controls or {}).items()},
        )
        final_summary.density = kept / total if total else 1.0
    return Summary(
        **header,
        status="complete" if complete else "running",
        final=final_summary,
        rounds=list(rounds),
        stages={r.key: StageSummary.of(r) for r in results},
        cost=Cost(
            stages=len(results),
            epochs_total=sum(r.epochs_trained for r in results),
            epochs_per_stage={r.key: r.epochs_trained for r in results},
            seconds_total=round(sum(r.seconds for r in results), 3),
            ticket_found_epoch=ticket_found_epoch,
        ),
        details=dict(details or {}),
    )


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _stage(data: Mapping[str, Any]) -> StageSummary:
    return StageSummary(**_known(StageSummary, data))


def _final(data: Any) -> FinalSummary | None:
    if not isinstance(data, Mapping):
        return None
    values = _known(FinalSummary, data)
    values["controls"] = {k: _stage(v) for k, v in (data.get("controls") or {}).items() if isinstance(v, Mapping)}
    return FinalSummary(**values)


def _round(data: Mapping[str, Any]) -> RoundSummary:
    return RoundSummary(
        round=int(data.get("round", 0)),
        density=float(data.get("density", 1.0)),
        kept=int(data.get("kept", 0)),
        ticket=_stage(data.get("ticket") or {}),
        controls={k: _stage(v) for k, v in (data.get("controls") or {}).items() if isinstance(v, Mapping)},
    )
