"""Finding runs: every directory under a path that holds a ``summary.json``, with its config and epoch records.

A run directory is what ``lth-run`` writes (see :mod:`lth_runner.session`): ``summary.json`` (the method's results,
rewritten after every stage), ``config.yaml`` (the validated configuration) and ``metrics.jsonl`` (one event per
line). The path given may be one run, a multirun sweep (``<sweep>/<job number>/``) or any tree holding runs.

Choices:
- a run counts as complete only when its summary says ``status: complete``; other runs are kept but flagged;
- header fields missing from a summary (method, model, dataset, seed, target sparsity) are read from ``config.yaml``;
- an epoch logged twice (a crash after the record was written, the epoch re-run on resume) keeps the LAST record of
  each (stage key, epoch), at the position where that epoch first appeared;
- runs of one (model, dataset, method) whose configurations differ in anything but the seed, the target sparsity
  and settings that do not change results (paths, logging, devices) are told apart by a *variant* label naming the
  differing keys (``lth_iter [optim.lr=0.05]``), so that different recipes are never averaged together.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lth_runner.config.schema import RESULT_NEUTRAL_KEYS, is_result_neutral
from lth_runner.errors import UserError
from lth_runner.summary import Summary
from lth_runner.utils.dicts import flatten
from lth_runner.utils.io import read_jsonl

# Settings that do not change what a run computes (the one declared list), plus the fields that index the table
# (seed, target sparsity) and the names derived from the groups.
NEUTRAL_KEYS = (*RESULT_NEUTRAL_KEYS, "seed", "sparsity.target", "method.name", "model.name", "dataset.name")
_MAX_VARIANT_KEYS = 3


class ReportError(UserError):
    """A report that cannot be made (no runs, an unreadable file); the CLI prints one line and exits with 2."""


@dataclass
class RunRecord:
    """One run directory: its summary, configuration and (lazily) its de-duplicated epoch records."""

    path: Path
    rel: str  # the path relative to the collected root ("." for the root itself)
    summary: Summary
    config: dict[str, Any]
    method: str
    model: str
    dataset: str
    seed: int | None
    target_sparsity: float | None
    status: str
    variant: str = ""
    _epochs: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def label(self) -> str:
        """The row label: the method, plus the variant when runs of the method differ in their configuration."""
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    @property
    def test_acc(self) -> float | None:
        """The headline number: ``final.test_acc`` (a fraction), or None when the run has none yet."""
        final = self.summary.final
        return None if final is None or final.test_acc is None else float(final.test_acc)

    @property
    def sparsity_pct(self) -> float | None:
        return None if self.target_sparsity is None else round(100.0 * self.target_sparsity, 6)

    @property
    def epochs_total(self) -> float | None:
        return float(self.summary.cost.epochs_total) if self.summary.cost.stages else None

    @property
    def seconds_total(self) -> float | None:
        return float(self.summary.cost.seconds_total) if self.summary.cost.stages else None

    def epoch_records(self) -> list[dict[str, Any]]:
        """The ``epoch`` events of ``metrics.jsonl`` in order, one per (stage key, epoch): the last one logged."""
        if self._epochs is None:
            self._epochs = dedupe_epochs(read_jsonl(self.path / "metrics.jsonl"))
        return self._epochs


def dedupe_epochs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch records, the last per (key, epoch) kept at the position where that epoch first appeared."""
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for record in records:
        if record.get("event") == "epoch":
            latest[(record.get("key"), record.get("epoch"))] = record  # re-assigning keeps the first position
    return list(latest.values())


def collect_runs(path: str | Path) -> list[RunRecord]:
    """Every run under ``path`` (or ``path`` itself), sorted by directory (job numbers in numeric order)."""
    root = Path(path)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory (give a run directory, a sweep directory or a tree of runs)")
    summaries = sorted(root.rglob("summary.json"), key=lambda p: _natural_key(p.parent.relative_to(root)))
    runs = [load_run(p.parent, root) for p in summaries if p.is_file()]
    if not runs:
        started = started_without_summary(root)
        hint = f" ({len(started)} started run(s) have not written one yet)" if started else ""
        raise ReportError(f"no runs found under {root}: no directory holds a summary.json{hint}")
    label_variants(runs)
    return runs


def started_without_summary(root: str | Path) -> list[Path]:
    """Run directories that have a config and metrics but no summary yet (killed during their first stage)."""
    root = Path(root)
    return sorted(
        (p.parent for p in root.rglob("metrics.jsonl") if not (p.parent / "summary.json").exists()),
        key=lambda p: _natural_key(p.relative_to(root)),
    )


def load_run(run_dir: Path, root: Path | None = None) -> RunRecord:
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"unreadable summary {summary_path}: {_one_line(err)}") from None
    if not isinstance(summary, dict):
        raise ReportError(f"unreadable summary {summary_path}: expected a JSON object, found {type(summary).__name__}")
    config = _read_config(run_dir / "config.yaml")
    cfg = flatten(config)
    target = summary.get("target_sparsity", cfg.get("sparsity.target"))
    seed = summary.get("seed", cfg.get("seed"))
    rel = run_dir.relative_to(root).as_posix() if root is not None else run_dir.as_posix()
    return RunRecord(
        path=run_dir,
        rel=rel or ".",
        summary=Summary.from_dict(summary),
        config=config,
        method=str(summary.get("method") or cfg.get("method.name") or "unknown"),
        model=str(summary.get("model") or cfg.get("model.name") or "unknown"),
        dataset=str(summary.get("dataset") or cfg.get("dataset.name") or "unknown"),
        seed=int(seed) if isinstance(seed, (int, float)) else None,
        target_sparsity=float(target) if isinstance(target, (int, float)) else None,
        status=str(summary.get("status") or "unknown"),
    )


def label_variants(runs: list[RunRecord]) -> None:
    """Set ``variant`` on runs whose (model, dataset, method) siblings were run with a different configuration."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.model, run.dataset, run.method), []).append(run)
    for members in groups.values():
        flats = [_comparable(run.config) for run in members]
        known = [f for f in flats if f]
        if len(known) < 2:
            continue
        keys = sorted({k for f in known for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in known}) > 1]
        if not differing:
            continue
        for run, flat in zip(members, flats):
            if not flat:
                run.variant = "config unknown"
                continue
            shown = [f"{k}={_show(flat.get(k))}" for k in differing[:_MAX_VARIANT_KEYS]]
            if len(differing) > _MAX_VARIANT_KEYS:
                shown.append(f"+{len(differing) - _MAX_VARIANT_KEYS} more")
            run.variant = ", ".join(shown)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    flat = flatten(config)
    return {k: v for k, v in flat.items() if not is_result_neutral(k, NEUTRAL_KEYS)}


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ReportError(f"unreadable config {path}: {_one_line(err)}") from None
    return data if isinstance(data, dict) else {}


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _natural_key(path: Path) -> list[tuple[int, Any]]:
    """Sort key that orders ``2`` before ``10`` (multirun job numbers)."""
    key: list[tuple[int, Any]] = []
    for part in path.parts:
        for token in re.split(r"(\d+)", part):
            if token:
                key.append((0, int(token)) if token.isdigit() else (1, token))
        key.append((2, ""))
    return key


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
