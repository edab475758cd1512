"""Weights & Biases: a tracker sink that mirrors ``metrics.jsonl`` into a W&B run. ``metrics.jsonl`` stays the
source of truth; W&B is a view of it that never prompts, never blocks a run and never fails one.

- Mode: ``logger.wandb.mode`` ``online`` / ``offline`` / ``disabled``, or ``auto``: ``$WANDB_MODE`` if set, else
  online when credentials exist (``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE`` or a ``.netrc`` entry for the
  W&B host), else offline. Online without credentials, or an online start that fails (no network), continues
  offline with a one-line warning: the data is kept for ``wandb sync``.
- Files land in ``<output_dir>/wandb/``; the W&B run id is kept in ``<output_dir>/wandb_run_id`` so that a resumed
  or requeued run continues the same W&B run (``resume="allow"``).
- History steps: the epoch record number ``i`` of ``metrics.jsonl`` (0-based, in file order) is logged at W&B step
  ``i``. W&B drops any step lower than one it already has, and a process that is killed loses whatever W&B had not
  yet written (its run file is flushed every few seconds), so a resumed run first finds the last step W&B holds
  (online: the server's resume step; offline: the run files of earlier attempts in ``<output_dir>/wandb/``) and
  re-logs the records of ``metrics.jsonl`` after it before logging anything new. The history then holds exactly
  the epoch records of ``metrics.jsonl``, one row each, in order: after keeping the last row per ``(key, epoch)``
  (an epoch cut short by a crash after it was logged is logged again when re-run) it equals ``metrics.jsonl``
  deduplicated the same way.
- Keys: epoch metrics are prefixed by the stage phase (``dense/test_acc``, ``ticket/test_acc``, ``reinit/val_acc``,
  ``eb/eb_max_distance``) so curves of different stages are separable; ``key``, ``phase``, ``round``, ``epoch``,
  ``density``, ``lr``, ``optimizer_step``, ``epoch_seconds`` and ``elapsed`` are unprefixed. A prune is logged
  with the next epoch's row: ``prune/round``, ``prune/density``, ``prune/kept``, ``layer_density/<name>``.
- End of run: the summary gets ``summary.json``'s ``final`` block (``test_acc``, ``density``, ... at the top level
  and as ``final``), ``cost`` and ``status``; IMP-style summaries (``rounds``) add the table
  ``accuracy_vs_density/table`` (round, density, ticket and control accuracies) and a line chart of it.
"""

from __future__ import annotations

import dataclasses
import netrc
import os
import secrets
import string
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lth_runner.errors import UserError
from lth_runner.tracking.wandb_records import read_run_file, run_files
from lth_runner.utils.io import read_jsonl, write_text_atomic

RUN_ID_FILE = "wandb_run_id"
DEFAULT_BASE_URL = "https://api.wandb.ai"
_MODE_ALIASES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
# Epoch-record fields logged without the phase prefix (the rest of the numeric fields get it).
_SHARED = {"round": "round", "epoch": "epoch", "density": "density", "lr": "lr", "step": "optimizer_step"}
_SHARED.update(epoch_seconds="epoch_seconds", elapsed="elapsed")
# ``summary.json`` ``final`` fields also set at the top level of the W&B summary (all of them are under ``final``).
_HEADLINE = ("test_acc", "final_test_acc", "best_val_acc", "density", "kept")
_NOT_LOGGED = {"event", "time", "key", "phase", "epochs"}


# ---------------------------------------------------------------------------------------------------- mode
def has_credentials(environ: Mapping[str, str] | None = None) -> bool:
    """Whether W&B credentials exist here, found without W&B's login flow (which may prompt or call the server):
    ``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE`` naming a file, or a password for the W&B host
    (``$WANDB_BASE_URL``, default api.wandb.ai) in the netrc file (``$NETRC``, else ``~/.netrc``)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    token_file = env.get("WANDB_IDENTITY_TOKEN_FILE")
    if token_file and Path(token_file).expanduser().is_file():
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname
    path = Path(env["NETRC"]).expanduser() if env.get("NETRC") else Path(env.get("HOME", "~"), ".netrc").expanduser()
    if not host or not path.is_file():
        return False
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_mode(configured: str, environ: Mapping[str, str] | None = None) -> str:
    """``online``, ``offline`` or ``disabled`` for ``logger.wandb.mode=configured``. ``auto``: ``$WANDB_MODE`` if set
    (W&B's aliases ``run``/``dryrun`` accepted), else online with credentials, offline without. Online without
    credentials is offline (with a warning): W&B would otherwise prompt for a key."""
    env = os.environ if environ is None else environ
    mode = configured
    if configured == "auto":
        value = env.get("WANDB_MODE", "").strip().lower()
        if value and value not in _MODE_ALIASES:
            raise UserError(f"WANDB_MODE={value!r} is not accepted: expected online, offline or disabled")
        mode = _MODE_ALIASES.get(value) or ("online" if has_credentials(env) else "offline")
    if mode == "online" and not has_credentials(env):
        _warn(
            "W&B online mode needs credentials (WANDB_API_KEY or `wandb login`); logging offline instead "
            "(upload later with `wandb sync`)"
        )
        return "offline"
    return mode


# ---------------------------------------------------------------------------------------------------- run files
def _next_local_step(output_dir: Path, run_id: str) -> int:
    """One past the last history step recorded locally for ``run_id`` (0 when none)."""
    last = -1
    for path in run_files(output_dir, run_id):
        try:
            for record in read_run_file(path):
                if record.WhichOneof("record_type") == "history":
                    last = max(last, record.history.step.num)
        except Exception as err:  # an unreadable file: replay more rather than less
            _warn(f"could not read {path} ({err}); W&B history may repeat some epochs")
    return last + 1


# ---------------------------------------------------------------------------------------------------- sink
class WandbSink:
    """Tracker sink that logs a run's events to W&B (rank 0 only; ``RunContext`` creates it)."""

    def __init__(self, wb_run: Any, output_dir: Path, epochs_logged: int) -> None:
        self._run = wb_run
        self.output_dir = output_dir
        self._step = epochs_logged  # the W&B step of the next epoch record = epoch records in metrics.jsonl so far
        self._failed_once = False

    @classmethod
    def create(cls, run: Any) -> WandbSink:
        """Start (or resume) the W&B run of ``run`` (a ``RunContext``: ``cfg``, ``output_dir``, ``console``)."""
        cfg = run.cfg.logger.wandb
        output_dir = Path(run.output_dir).resolve()
        mode = resolve_mode(cfg.mode)
        id_path = output_dir / RUN_ID_FILE
        resumed = id_path.exists() and bool(id_path.read_text().strip())
        run_id = id_path.read_text().strip() if resumed else _new_id()
        if not resumed:
            write_text_atomic(id_path, run_id + "\n")
        local_next = _next_local_step(output_dir, run_id) if resumed else 0
        init = dict(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or sweep_group(output_dir),
            name=output_dir.name,
            tags=run_tags(run.cfg),
            config=dataclasses.asdict(run.cfg),
            dir=str(output_dir),
            id=run_id,
            resume="allow" if resumed else None,
        )
        try:
            wb_run, mode = _start(mode, init)
        except Exception as err:  # W&B is a view of metrics.jsonl: losing it must not lose the run
            _warn(f"W&B is off for this run: it did not start ({_one_line(err)})")
            return cls(None, output_dir, 0)
        # W&B's history already ends here: online, the server says; offline, the earlier attempts' run files do.
        known = (wb_run.starting_step if wb_run.resumed else 0) if mode == "online" else local_next
        records = read_jsonl(output_dir / "metrics.jsonl")
        sink = cls(wb_run, output_dir, sum(r.get("event") == "epoch" for r in records))
        try:
            sink._replay(records, known)
        except Exception as err:
            _warn(f"W&B could not re-log the epochs of earlier attempts ({_one_line(err)})")
        sink._announce(run, mode, resumed)
        return sink

    # ------------------------------------------------------------------------------------ sink interface
    def log(self, record: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            event = record.get("event")
            if event == "epoch":
                self._log_epoch(record, self._step)
                self._step += 1
            elif event == "prune":
                self._log_prune(record, self._step)
            elif event == "run_start":
                self._run.summary.update(
                    {k: record[k] for k in ("data", "prunable_weights") if record.get(k) is not None}
                )
            elif event == "run_end":
                self._log_end(record)
        except Exception as err:
            if not self._failed_once:
                self._failed_once = True
                _warn(f"W&B logging failed ({_one_line(err)}); metrics.jsonl is unaffected")

    def close(self, failed: bool = False) -> None:
        """Finish the W&B run (exit code 1 when the run failed); idempotent, never raises."""
        wb_run, self._run = self._run, None
        if wb_run is None:
            return
        try:
            import sys

            if failed and isinstance(sys.exc_info()[1], SystemExit):
                wb_run.mark_preempting()  # a preemption hand-over (the job is requeued and resumes this run)
            wb_run.finish(exit_code=1 if failed else 0)
        except Exception as err:
            _warn(f"finishing the W&B run failed ({_one_line(err)})")

    # ------------------------------------------------------------------------------------ events
    def _log_epoch(self, record: dict[str, Any], step: int) -> None:
        phase = record.get("phase") or "train"
        row: dict[str, Any] = {"key": record.get("key"), "phase": phase}
        for name, value in record.items():
            if name in _NOT_LOGGED or not _is_number(value):
                continue
            row[_SHARED.get(name) or f"{phase}/{name}"] = int(value) if isinstance(value, bool) else value
        self._run.log(row, step=step, commit=True)

    def _log_prune(self, record: dict[str, Any], step: int) -> None:
        """Merged into the row of the next epoch (``step``), which commits it."""
        row = {f"prune/{k}": record[k] for k in ("round", "density", "kept") if _is_number(record.get(k))}
        for name, value in (record.get("layer_densities") or {}).items():
            row[f"layer_density/{name}"] = value
        self._run.log(row, step=step, commit=False)

    def _log_end(self, record: dict[str, Any]) -> None:
        import json

        summary_path = Path(record.get("summary") or self.output_dir / "summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        final = {k: v for k, v in (summary.get("final") or {}).items() if _is_number(v) or v is None}
        values: dict[str, Any] = {k: final[k] for k in _HEADLINE if k in final}
        values.update(final=final, status=record.get("status") or summary.get("status"))
        if final.get("density") is not None:
            values["sparsity"] = 1.0 - final["density"]
        cost = record.get("cost") or summary.get("cost")
        if cost:
            values["cost"] = cost
        self._run.summary.update(values)
        if summary.get("rounds"):
            import wandb

            columns, rows, long_rows = accuracy_table(summary)
            chart = wandb.plot.line(
                wandb.Table(columns=["density", "test_acc", "series"], data=long_rows),
                "density",
                "test_acc",
                stroke="series",
                title="Test accuracy (best validation epoch) vs density",
            )
            table = wandb.Table(columns=columns, data=rows)
            self._run.log(
                {"accuracy_vs_density/table": table, "accuracy_vs_density/plot": chart}, step=self._step, commit=True
            )
            self._step += 1

    # ------------------------------------------------------------------------------------ resume
    def _replay(self, records: list[dict[str, Any]], known: int) -> None:
        """Re-log the epoch (and prune) records of earlier attempts that W&B does not have: steps >= ``known``."""
        index = 0
        for record in records:
            event = record.get("event")
            if event == "epoch":
                if index >= known:
                    self._log_epoch(record, index)
                index += 1
            elif event == "prune" and index >= known:
                self._log_prune(record, index)
        self._step = max(self._step, known)

    def _announce(self, run: Any, mode: str, resumed: bool) -> None:
        console = getattr(run, "console", None)
        if console is None:
            return
        verb = "resumed" if resumed else "started"
        if mode == "online":
            console.print(f"wandb: {verb} {self._run.url or self._run.id}")
        else:
            console.print(
                f"wandb: {verb} offline run {self._run.id} in {self.output_dir / 'wandb'} "
                f"(upload: wandb sync {self.output_dir / 'wandb'}/offline-run-*)"
            )


# ---------------------------------------------------------------------------------------------------- helpers
def run_tags(cfg: Any) -> list[str]:
    """method, model, dataset, ``sparsity-<percent>``, ``seed-<seed>`` and the configured tags (no repeats)."""
    sparsity = f"sparsity-{round(100 * cfg.sparsity.target, 4):g}"
    tags = [cfg.method.name, cfg.model.name, cfg.dataset.name, sparsity, f"seed-{cfg.seed}", *cfg.logger.wandb.tags]
    return list(dict.fromkeys(str(t)[:64] for t in tags))


def sweep_group(output_dir: Path) -> str | None:
    """The sweep directory's name for a Hydra multirun job (its output directory's parent), else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(output_dir).parent.name
    except Exception:
        pass
    return None


def accuracy_table(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
    """Accuracy vs density from ``summary["rounds"]``: the wide table (round, density, ticket test acc, ticket final
    test acc, one column per control) and long rows (density, test acc, series) for a line chart."""
    rounds = summary["rounds"]
    controls = sorted({name for entry in rounds for name in entry.get("controls", {})})
    columns = ["round", "density", "ticket_test_acc", "ticket_final_test_acc", *(f"{c}_test_acc" for c in controls)]
    rows, long_rows = [], []
    for entry in rounds:
        ticket = entry.get("ticket", {})
        row = [entry["round"], entry["density"], ticket.get("best_val_test_acc"), ticket.get("final_test_acc")]
        long_rows.append([entry["density"], ticket.get("best_val_test_acc"), "ticket"])
        for name in controls:
            value = entry.get("controls", {}).get(name, {}).get("best_val_test_acc")
            row.append(value)
            if value is not None:
                long_rows.append([entry["density"], value, name])
        rows.append(row)
    return columns, rows, long_rows


def _start(mode: str, init: dict[str, Any]) -> tuple[Any, str]:
    """``wandb.init`` in ``mode``; an online start that fails (no network, server error) is retried offline."""
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own banners; our console says where the run is
    import wandb

    try:
        return wandb.init(mode=mode, settings=_settings(wandb), **init), mode
    except Exception as err:
        if mode != "online":
            raise
        _warn(f"W&B online start failed ({_one_line(err)}); logging offline instead (upload with `wandb sync`)")
    wandb.teardown()  # the failed start still holds the run id in W&B's service process
    return wandb.init(mode="offline", settings=_settings(wandb), **init), "offline"


def _settings(wandb: Any) -> Any:
    """No prompts, no console capture, no code saving, quiet; config values may change on resume (resume-neutral
    settings such as the device)."""
    return wandb.Settings(
        console="off",
        save_code=False,
        disable_code=True,
        disable_job_creation=True,
        silent=True,
        quiet=True,
        show_info=False,
        allow_val_change=True,
        reinit="create_new",  # several runs per process (multirun jobs, library use) never finish each other's
    )


def _new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
