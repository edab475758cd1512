"""Weights & Biases: a tracker sink that mirrors ``metrics.jsonl`` into a W&B run. ``metrics.jsonl`` stays the
source of truth; W&B is a view of it that never prompts, never blocks a run and never fails one (problems are
one-line warnings). Only rank 0 logs (``run_experiment`` creates the sink there only).

- Mode: ``logger.wandb.mode`` ``online`` / ``offline`` / ``disabled``, or ``auto``: ``$WANDB_MODE`` if set, else
  online when credentials exist (``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE`` or a ``.netrc`` entry for the
  W&B host), else offline. Online without credentials, or an online start that fails (no network), continues
  offline with a one-line warning: the data is kept for ``wandb sync``. ``disabled`` starts nothing, writes nothing.
- Files land in ``<output_dir>/wandb/`` (one ``offline-run-<time>-<id>`` or ``run-<time>-<id>`` folder per
  attempt). The W&B run id is kept in ``<output_dir>/wandb_run_id``: a resumed, requeued or re-run run continues
  the same W&B run (``resume="allow"``). ``<output_dir>/wandb_state.json`` is the sink's own record of what an
  attempt that finished its W&B run cleanly left in W&B (mode, epoch records, digest of the end-of-run uploads).
- History: every epoch record of ``metrics.jsonl`` is one W&B row carrying ``epoch_index``, its 0-based number
  among the epoch records of ``metrics.jsonl``; every metric is plotted against it (``define_metric("*",
  step_metric="epoch_index")``). Rows are logged without ``step=``, so W&B's own ``_step`` is just a row counter.
- Resume: a new attempt first re-logs the epoch records W&B may lack, then continues. Online, W&B holds up to the
  resumed run's ``summary["epoch_index"]``: re-logging starts after it (a run the server does not know yet, e.g.
  one whose earlier attempts were offline and never synced, gets everything). Offline there is no server to ask
  and this sink never reads W&B's run files, so an offline attempt re-logs every epoch record from the start: each
  offline folder holds the whole history up to its end (whatever ``wandb sync`` does with several folders of one
  run, appending or replacing, the last one alone is complete). A reader of the W&B history should therefore
  expect rows to repeat: **the last row per ``epoch_index`` is authoritative** (repeats are copies of the same
  record; charts against ``epoch_index`` overlap exactly). After that, keeping the last row per ``(key, epoch)``
  (an epoch cut short by a crash after it was logged is logged again, under a new ``epoch_index``, when it is
  re-run) gives exactly ``metrics.jsonl`` deduplicated the same way.
- A finished run that is run again (a re-submitted sweep) opens no W&B run when ``wandb_state.json`` says an
  earlier attempt in the same mode already finished it with every epoch record and the same end-of-run uploads;
  the sink starts W&B only if something new arrives (an epoch, a prune, or end-of-run files that changed).
- Keys: epoch metrics are prefixed by the stage phase (``dense/test_acc``, ``ticket/test_acc``, ``reinit/val_acc``,
  ``eb/eb_max_distance``) so curves of different stages are separable; ``key``, ``phase``, ``round``, ``epoch``,
  ``density``, ``lr``, ``optimizer_step``, ``epoch_seconds`` and ``elapsed`` are unprefixed. A prune is logged
  with the next epoch's row: ``prune/round``, ``prune/density``, ``prune/kept``, ``layer_density/<name>``.
- End of run: the summary gets ``summary.json``'s ``final`` block (``test_acc``, ``density``, ... at the top level
  and as ``final``), ``cost`` and ``status``; IMP-style summaries (``rounds``) add the table
  ``accuracy_vs_density/table`` (round, density, ticket and control accuracies) and a line chart of it, in a
  row W&B stamps with the last ``epoch_index``. Two
  artifacts are logged (offline too: W&B stages copies under ``$WANDB_DATA_DIR/artifacts/staging`` and ``wandb
  sync`` uploads them): ``masks-<run id>`` (type ``masks``: every ``masks/*.pt``) and ``summary-<run id>`` (type
  ``summary``: ``summary.json`` and ``config.yaml``); a re-upload with other contents is a new version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
from lth_runner.utils.io import read_jsonl, write_json_atomic, write_text_atomic

RUN_ID_FILE = "wandb_run_id"
STATE_FILE = "wandb_state.json"
STEP_METRIC = "epoch_index"
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


# ---------------------------------------------------------------------------------------------------- sink
class WandbSink:
    """Tracker sink that logs a run's events to W&B (rank 0 only; ``run_experiment`` creates it with :meth:`create`).

    Until W&B is started (at once, or for a finished run only when something new arrives) the sink holds the
    ``wandb.init`` arguments; a sink whose W&B start failed, or ``disabled``, ignores every event."""

    def __init__(
        self,
        output_dir: Path,
        *,
        init: dict[str, Any] | None = None,
        mode: str = "disabled",
        resumed: bool = False,
        console: Any = None,
        records: list[dict[str, Any]] | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.output_dir = output_dir
        self._run: Any = None
        self._init = init  # wandb.init arguments while W&B is not started (None: nothing left to start)
        self._mode = mode
        self._resumed = resumed
        self._console = console
        self._records = records or []  # metrics.jsonl as it was when the sink was created
        self._state = state or {}  # wandb_state.json of earlier attempts (this run id only)
        self._next_index = sum(r.get("event") == "epoch" for r in self._records)  # epoch_index of the next epoch
        self._pending_prune: dict[str, Any] = {}  # a prune's fields, logged with the next epoch's row
        self._pending_start: dict[str, Any] | None = None
        self._end_digest: str | None = None  # what this attempt's run_end uploaded (None: no run_end)
        self._incomplete = False  # W&B may lack something this attempt logged (a failure was warned about)
        self._warned = False
        self._closed = False

    @classmethod
    def create(cls, run: Any) -> WandbSink:
        """Start (or resume) the W&B run of ``run`` (a ``RunContext``: ``cfg``, ``output_dir``, ``console``)."""
        cfg = run.cfg.logger.wandb
        output_dir = Path(run.output_dir).resolve()
        mode = resolve_mode(cfg.mode)
        if mode == "disabled":
            return cls(output_dir)
        id_path = output_dir / RUN_ID_FILE
        resumed = id_path.exists() and bool(id_path.read_text().strip())
        run_id = id_path.read_text().strip() if resumed else _new_id()
        if not resumed:
            write_text_atomic(id_path, run_id + "\n")
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
        records = read_jsonl(output_dir / "metrics.jsonl")  # W&B lacks these unless it says otherwise
        state = _read_state(output_dir, run_id) if resumed else {}
        sink = cls(output_dir, init=init, mode=mode, resumed=resumed, console=getattr(run, "console", None),
                   records=records, state=state)  # fmt: skip
        if sink._up_to_date():
            sink._print(f"wandb: {mode} run {run_id} already holds this finished run; nothing new to log")
        else:
            sink._start()
        return sink

    # ------------------------------------------------------------------------------------ sink interface
    def log(self, record: dict[str, Any]) -> None:
        if self._closed or (self._run is None and self._init is None):
            return
        try:
            event = record.get("event")
            if self._run is None:  # a finished run: start W&B only for something it does not have
                if event == "run_start":
                    self._pending_start = record
                    return
                if not (event in ("epoch", "prune") or (event == "run_end" and self._end_changed(record))):
                    return
                if not self._start():
                    return
            if event == "epoch":
                index, self._next_index = self._next_index, self._next_index + 1
                self._log_epoch(record, index)
            elif event == "prune":
                self._stage_prune(record)
            elif event == "run_start":
                self._log_start(record)
            elif event == "run_end":
                self._log_end(record)
        except Exception as err:
            self._warn_once(f"W&B logging failed ({_one_line(err)}); metrics.jsonl is unaffected")

    def close(self, failed: bool = False) -> None:
        """Finish the W&B run (exit code 1 when the run failed) and record what it holds; idempotent, never
        raises."""
        if self._closed:
            return
        self._closed = True
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
            return
        complete = not self._incomplete
        state = {
            "run_id": wb_run.id,
            "mode": self._mode,
            "epochs": self._next_index if complete else 0,
            "end": self._end_digest if complete and not failed else None,
        }
        try:
            write_json_atomic(self.output_dir / STATE_FILE, state)
        except Exception as err:
            _warn(f"could not write {self.output_dir / STATE_FILE} ({_one_line(err)})")

    # ------------------------------------------------------------------------------------ start and resume
    def _up_to_date(self) -> bool:
        """Whether an earlier attempt in this mode finished this W&B run with every epoch record and the end of the
        run (a finished run run again): then W&B is started only if something new arrives."""
        state = self._state
        return (
            self._resumed
            and state.get("mode") == self._mode
            and state.get("end") is not None
            and state.get("epochs") == self._next_index
        )

    def _start(self) -> bool:
        """``wandb.init``, the step metric, then the epoch records W&B may lack. False when W&B did not start."""
        init, self._init = self._init, None
        try:
            self._run, self._mode = _start(self._mode, init)
        except Exception as err:  # W&B is a view of metrics.jsonl: losing it must not lose the run
            _warn(f"W&B is off for this run: it did not start ({_one_line(err)})")
            return False
        try:
            self._run.define_metric(STEP_METRIC)
            self._run.define_metric("*", step_metric=STEP_METRIC)
            self._replay(self._known_epochs())
        except Exception as err:
            _warn(f"W&B could not re-log the epochs of earlier attempts ({_one_line(err)})")
            self._incomplete = True
        self._records = []
        self._print(self._started_line())
        if self._pending_start is not None:
            self._log_start(self._pending_start)
        return True

    def _known_epochs(self) -> int:
        """How many epoch records (from the first) W&B surely holds. Online: one past the resumed run's last
        ``epoch_index``. Offline: none (no server to ask; rows may repeat, the last row per index is authoritative)."""
        if self._mode != "online" or not getattr(self._run, "resumed", False):
            return 0
        last = self._run.summary.get(STEP_METRIC)
        return int(last) + 1 if isinstance(last, (int, float)) and not isinstance(last, bool) else 0

    def _replay(self, known: int) -> None:
        """Re-log the epoch (and prune) records of earlier attempts from ``epoch_index`` ``known`` on."""
        index = 0
        for record in self._records:
            event = record.get("event")
            if event == "epoch":
                if index >= known:
                    self._log_epoch(record, index)
                index += 1
            elif event == "prune" and index >= known:
                self._stage_prune(record)

    # ------------------------------------------------------------------------------------ events
    def _log_epoch(self, record: dict[str, Any], index: int) -> None:
        phase = record.get("phase") or "train"
        row, self._pending_prune = self._pending_prune, {}
        row.update({STEP_METRIC: index, "key": record.get("key"), "phase": phase})
        for name, value in record.items():
            if name in _NOT_LOGGED or not _is_number(value):
                continue
            row[_SHARED.get(name) or f"{phase}/{name}"] = int(value) if isinstance(value, bool) else value
        self._run.log(row)

    def _stage_prune(self, record: dict[str, Any]) -> None:
        """A prune's fields, merged into the row of the next epoch."""
        row = {f"prune/{k}": record[k] for k in ("round", "density", "kept") if _is_number(record.get(k))}
        for name, value in (record.get("layer_densities") or {}).items():
            row[f"layer_density/{name}"] = value
        self._pending_prune.update(row)

    def _log_start(self, record: dict[str, Any]) -> None:
        self._pending_start = None
        self._run.summary.update({k: record[k] for k in ("data", "prunable_weights") if record.get(k) is not None})

    def _log_end(self, record: dict[str, Any]) -> None:
        summary_path = self._summary_path(record)
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
            self._run.log({"accuracy_vs_density/table": table, "accuracy_vs_density/plot": chart})
        digest = self._end_files_digest(summary_path)
        if self._log_artifacts(summary_path):
            self._end_digest = digest

    def _log_artifacts(self, summary_path: Path) -> bool:
        """``masks-<id>`` (every ``masks/*.pt``) and ``summary-<id>`` (``summary.json``, ``config.yaml``); a
        failure is a warning. True when both were handed to W&B."""
        try:
            import wandb

            run_id = self._run.id
            masks = sorted((self.output_dir / "masks").glob("*.pt"))
            if masks:
                artifact = wandb.Artifact(f"masks-{run_id}", type="masks", metadata={"masks": len(masks)})
                for path in masks:
                    artifact.add_file(str(path), name=path.name)
                self._run.log_artifact(artifact)
            files = [p for p in (summary_path, self.output_dir / "config.yaml") if p.is_file()]
            if files:
                artifact = wandb.Artifact(f"summary-{run_id}", type="summary")
                for path in files:
                    artifact.add_file(str(path), name=path.name)
                self._run.log_artifact(artifact)
            return True
        except Exception as err:
            _warn(
                f"W&B artifacts (masks, summary) were not logged ({_one_line(err)}); the files are in {self.output_dir}"
            )
            self._incomplete = True
            return False

    # ------------------------------------------------------------------------------------ helpers
    def _summary_path(self, record: dict[str, Any]) -> Path:
        return Path(record.get("summary") or self.output_dir / "summary.json")

    def _end_files_digest(self, summary_path: Path) -> str:
        """A digest of what the end of the run uploads (summary.json, config.yaml, the masks)."""
        digest = hashlib.sha256()
        for path in [summary_path, self.output_dir / "config.yaml", *sorted((self.output_dir / "masks").glob("*.pt"))]:
            if path.is_file():
                digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
        return digest.hexdigest()

    def _end_changed(self, record: dict[str, Any]) -> bool:
        return self._end_files_digest(self._summary_path(record)) != self._state.get("end")

    def _started_line(self) -> str:
        verb = "resumed" if self._resumed else "started"
        if self._mode == "online":
            return f"wandb: {verb} {self._run.url or self._run.id}"
        return (
            f"wandb: {verb} offline run {self._run.id} in {self.output_dir / 'wandb'} "
            f"(upload: wandb sync {self.output_dir / 'wandb'}/offline-run-*)"
        )

    def _print(self, line: str) -> None:
        if self._console is not None:
            self._console.print(line)

    def _warn_once(self, message: str) -> None:
        self._incomplete = True
        if not self._warned:
            self._warned = True
            _warn(message)


def _read_state(output_dir: Path, run_id: str) -> dict[str, Any]:
    """``wandb_state.json`` when it belongs to ``run_id`` (an unreadable file is no state: replay more)."""
    try:
        state = json.loads((output_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("run_id") == run_id else {}


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
        row = [entry["round"], entry["density"], ticket.get("test_acc"), ticket.get("final_test_acc")]
        long_rows.append([entry["density"], ticket.get("test_acc"), "ticket"])
        for name in controls:
            value = entry.get("controls", {}).get(name, {}).get("test_acc")
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
