"""The Weights & Biases sink, offline (no network here): what ``lth-run`` writes into W&B's own run files (read back
with the tests-only reader ``tests/wandb_run_file.py``), resuming into the same W&B run, artifacts, re-running a
finished sweep, failures, mode resolution, and ``disabled``.

W&B history is read the way the sink documents it: rows carry ``epoch_index`` (the epoch record's number in
``metrics.jsonl``), rows may repeat across attempts, and the last row per ``epoch_index`` is authoritative.

``tests/conftest.py`` sets ``WANDB_MODE=disabled`` for the session; every test here that wants W&B turns it on
explicitly (``logger.wandb.mode=offline`` and/or ``WANDB_MODE`` in the subprocess environment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import UserError
from lth_runner.tracking.tracker import JsonlSink, Tracker
from lth_runner.tracking.wandb_sink import (
    RUN_ID_FILE,
    STATE_FILE,
    STEP_METRIC,
    WandbSink,
    has_credentials,
    resolve_mode,
    sweep_group,
)
from lth_runner.utils.io import append_jsonl, read_jsonl
from tests.conftest import REPO
from tests.wandb_run_file import history_rows, read_run_file, run_files

# The model and dataset are explicit: the project's defaults are not these small ones.
FAST = ["debug=fast", "model=mlp", "dataset=mnist1d", "logger.console=plain", "trainer.num_threads=1"]


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory):
    """W&B's cache/config/data folders inside the test's tmp (not the user's home), for this process too."""
    home = tmp_path_factory.mktemp("wandb_home")
    env = {f"WANDB_{name}_DIR": str(home / name.lower()) for name in ("CACHE", "CONFIG", "DATA")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


def lth_run(data_root, wandb_home, *args, env=None, multirun=False, timeout=120):
    """``lth-run ARGS`` with stdin closed (W&B must never wait for input) and W&B offline in the environment."""
    env = {**os.environ, "WANDB_MODE": "offline", **wandb_home, "LTH_DATA_ROOT": str(data_root), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lth_runner.train", *(["-m"] if multirun else []), *FAST, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------------- run files
def records(path, kind):
    return [getattr(r, kind) for r in read_run_file(path) if r.WhichOneof("record_type") == kind]


def summary_of(path):
    """The run's final summary: every summary update of the file, applied in order."""
    summary = {}
    for update in records(path, "summary"):
        for item in update.update:
            summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return summary


def config_of(path):
    (run,) = records(path, "run")
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def exit_code_of(path):
    exits = records(path, "exit")
    return exits[-1].exit_code if exits else None


def artifacts_of(path):
    """The artifacts a run file hands to ``wandb sync``, by type (W&B's own table artifacts left out)."""
    return {a.type: a for a in records(path, "artifact") if a.type != "run_table"}


def epoch_rows(path):
    return [row for row in history_rows(path) if "key" in row]


def by_index(rows):
    """The history as the sink documents it: the last row per epoch_index, in epoch_index order."""
    last = {}
    for row in rows:
        last[row[STEP_METRIC]] = row
    return [last[i] for i in sorted(last)]


def epoch_records(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["event"] == "epoch"]


def comparable_row(row):
    """A history row as (key, epoch, round, test acc, val acc, train loss, density)."""
    phase = row["phase"]
    return (row["key"], row["epoch"], row["round"], row[f"{phase}/test_acc"], row[f"{phase}/val_acc"],
            row[f"{phase}/train_loss"], row["density"])  # fmt: skip


def comparable_record(record):
    return (record["key"], record["epoch"], record["round"], record["test_acc"], record["val_acc"],
            record["train_loss"], record["density"])  # fmt: skip


def dedup(items):
    """The last item per (key, epoch), in order of first appearance (how metrics.jsonl is read after a crash)."""
    last = {}
    for item in items:
        last[item[:2]] = item
    return list(last.values())


def run_id_of(run_dir):
    return (run_dir / RUN_ID_FILE).read_text().strip()


def state_of(run_dir):
    return json.loads((run_dir / STATE_FILE).read_text())


def offline_folders(run_dir):
    return sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))


def finished_files(run_dir, run_id=None, timeout=20):
    """The run files of ``run_dir`` once each has its exit record: in process, W&B's service may still be writing
    a run's file when ``finish()`` returns (a CLI run's files are complete when its process has left)."""
    deadline = time.monotonic() + timeout
    while True:
        paths = run_files(run_dir, run_id or run_id_of(run_dir))
        if (paths and all(exit_code_of(p) is not None for p in paths)) or time.monotonic() > deadline:
            return paths
        time.sleep(0.1)


def next_second():
    """W&B names an attempt's folder by its start second: two attempts of one run must not share a second."""
    time.sleep(1.05 - time.time() % 1)


# ---------------------------------------------------------------------------------------------------- CLI runs
@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory, data_root, wandb_home):
    """One finished offline sweep of two jobs (seed 3 and 4), shared by the tests that read it or re-run it."""
    sweep_dir = tmp_path_factory.mktemp("sweeps") / "sweep-seed"
    args = ["seed=3,4", "trainer.epochs=2", "method.controls=[reinit]", "logger.wandb.mode=offline",
            "logger.wandb.tags=[smoke]", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    result = lth_run(data_root, wandb_home, *args, multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    job_dirs = sorted(p.parent for p in sweep_dir.glob(f"*/{RUN_ID_FILE}"))  # the jobs' directories, however named
    assert len(job_dirs) == 2
    return SimpleNamespace(args=args, result=result, sweep_dir=sweep_dir, job_dirs=job_dirs)


def test_an_offline_run_mirrors_metrics_jsonl_into_wandb(offline_sweep):
    run_dir = offline_sweep.job_dirs[0]  # seed 3
    run_id = run_id_of(run_dir)
    (path,) = run_files(run_dir, run_id)
    assert path.parent.name.startswith("offline-run-") and path.parent.name.endswith(f"-{run_id}")
    assert f"wandb: started offline run {run_id}" in offline_sweep.result.stdout

    # every metric is plotted against epoch_index
    globs = {m.glob_name: m.step_metric for m in records(path, "metric") if m.glob_name}
    assert globs == {"*": STEP_METRIC}

    # history: one row per epoch record, same order, same numbers, epoch_index = epoch record number
    epochs = epoch_records(run_dir)
    rows = epoch_rows(path)
    assert len(epochs) == len(rows) == 10  # dense 2 + (ticket 2 + reinit 2) x 2 rounds
    assert [r[STEP_METRIC] for r in rows] == list(range(10))
    assert [comparable_row(r) for r in rows] == [comparable_record(r) for r in epochs]
    assert [r["phase"] for r in rows] == ["dense"] * 2 + (["ticket"] * 2 + ["reinit"] * 2) * 2
    assert rows[3]["ticket/test_acc"] == epochs[3]["test_acc"] and "dense/test_acc" not in rows[3]

    # each prune lands in the next epoch's row
    prunes = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["event"] == "prune"]
    assert [p["round"] for p in prunes] == [1, 2]
    for prune, row in zip(prunes, (rows[2], rows[6])):
        assert row["prune/round"] == prune["round"] and row["prune/kept"] == prune["kept"]
        assert {k: row[f"layer_density/{k}"] for k in prune["layer_densities"]} == prune["layer_densities"]

    # run record: name, tags, config
    (run,) = records(path, "run")
    assert run.display_name == run_dir.name and run.run_id == run_id and run.run_group == "sweep-seed"
    assert list(run.tags) == ["lth_iter", "mlp", "mnist1d", "sparsity-80", "seed-3", "smoke"]
    config = config_of(path)
    assert config["seed"] == 3 and config["method"]["name"] == "lth_iter" and config["model"]["name"] == "mlp"
    assert config["method"]["controls"] == ["reinit"] and config["logger"]["wandb"]["mode"] == "offline"

    # summary: the final block of summary.json, its cost, the status
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary_of(path)
    assert final["test_acc"] == summary["final"]["test_acc"]
    assert final["density"] == summary["final"]["density"] == 0.2
    assert final["sparsity"] == pytest.approx(0.8) and final["status"] == "complete"
    assert final["cost"]["epochs_total"] == summary["cost"]["epochs_total"] == 10
    assert exit_code_of(path) == 0

    # the accuracy-vs-density table, as W&B stored it
    (table_file,) = (path.parent / "files" / "media" / "table" / "accuracy_vs_density").glob("table_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["round", "density", "ticket_test_acc", "ticket_final_test_acc", "reinit_test_acc"]
    expected = [
        [e["round"], e["density"], e["ticket"]["best_val_test_acc"], e["ticket"]["final_test_acc"]]
        + [e["controls"]["reinit"]["best_val_test_acc"] if e["controls"] else None]
        for e in summary["rounds"]
    ]
    assert table["data"] == expected and expected[0][-1] is None and expected[2][1] == 0.2

    # artifacts, as `wandb sync` will upload them: the run file's artifact records and their staged copies
    artifacts = artifacts_of(path)
    assert sorted(artifacts) == ["masks", "summary"]
    assert artifacts["masks"].name == f"masks-{run_id}" and artifacts["summary"].name == f"summary-{run_id}"
    sources = {
        "masks": {p.name: p for p in (run_dir / "masks").glob("*.pt")},
        "summary": {name: run_dir / name for name in ("summary.json", "config.yaml")},
    }
    assert sorted(sources["masks"]) == ["round_01.pt", "round_02.pt"]
    for kind, files in sources.items():
        entries = {e.path: Path(e.local_path) for e in artifacts[kind].manifest.contents}
        assert sorted(entries) == sorted(files)
        assert all(entries[name].read_bytes() == files[name].read_bytes() for name in files)

    # what the sink keeps for itself: this finished attempt holds every epoch record and the end of the run
    state = state_of(run_dir)
    assert state["run_id"] == run_id and state["mode"] == "offline" and state["epochs"] == 10 and state["end"]


def test_a_killed_run_resumes_the_same_wandb_run_with_the_whole_history(tmp_path, data_root, wandb_home):
    run_dir = tmp_path / "run"
    args = ["trainer.epochs=3", f"hydra.run.dir={run_dir}"]  # logger.wandb.mode=auto: WANDB_MODE=offline
    # 4 steps per epoch: step 6 is mid-way through the second epoch of round 1's ticket
    killed = lth_run(
        data_root, wandb_home, *args, "plugins=[tests.fault_injection]", env={"LTH_KILL_AT": "round01/ticket:6"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_id = run_id_of(run_dir)
    assert len(epoch_records(run_dir)) == 4  # 3 dense + 1 ticket epoch logged before the kill
    assert not (run_dir / STATE_FILE).exists()  # no attempt finished its W&B run

    resumed = lth_run(data_root, wandb_home, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_id_of(run_dir) == run_id and f"wandb: resumed offline run {run_id}" in resumed.stdout
    paths = run_files(run_dir, run_id)
    assert len(paths) == 2 and all(p.name == f"run-{run_id}.wandb" for p in paths)
    assert len(offline_folders(run_dir)) == 2  # no run under another id
    assert [exit_code_of(p) for p in paths] == [None, 0]  # the killed attempt never finished
    assert records(paths[1], "run")[0].run_id == run_id

    epochs = epoch_records(run_dir)
    assert len(epochs) == 9
    expected = [comparable_record(r) for r in epochs]
    # what the killed attempt's W&B process wrote before it died: a prefix of metrics.jsonl
    first = [r[STEP_METRIC] for r in epoch_rows(paths[0])]
    assert first == list(range(len(first))) and len(first) <= 4
    # offline, the resumed attempt re-logs from the start: its folder alone holds the whole history
    assert [r[STEP_METRIC] for r in epoch_rows(paths[1])] == list(range(9))
    # both attempts' rows, read by epoch_index keeping the last row per index: metrics.jsonl
    rows = by_index([row for path in paths for row in epoch_rows(path)])
    assert [r[STEP_METRIC] for r in rows] == list(range(9))
    assert [comparable_row(r) for r in rows] == expected
    assert dedup([comparable_row(r) for r in rows]) == dedup(expected)
    assert state_of(run_dir)["epochs"] == 9


def test_rerunning_a_finished_sweep_reuses_its_wandb_runs_and_opens_none(offline_sweep, data_root, wandb_home):
    job_dirs = offline_sweep.job_dirs
    ids = [run_id_of(d) for d in job_dirs]
    folders = [offline_folders(d) for d in job_dirs]
    assert len(set(ids)) == 2 and all(len(f) == 1 for f in folders)
    for job_dir, seed in zip(job_dirs, (3, 4)):  # one W&B run per job, grouped by the sweep directory
        (path,) = run_files(job_dir, run_id_of(job_dir))
        (run,) = records(path, "run")
        assert run.run_group == "sweep-seed" and run.display_name == job_dir.name
        assert config_of(path)["seed"] == seed
    states = [state_of(d) for d in job_dirs]

    # the same command again, once the sweep has finished: same W&B runs, and none is opened (nothing new)
    again = lth_run(data_root, wandb_home, *offline_sweep.args, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.parent for p in offline_sweep.sweep_dir.glob(f"*/{RUN_ID_FILE}")) == job_dirs
    assert [run_id_of(d) for d in job_dirs] == ids
    assert [offline_folders(d) for d in job_dirs] == folders
    assert [state_of(d) for d in job_dirs] == states
    assert "wandb: resumed" not in again.stdout and "wandb: started" not in again.stdout
    for run_id in ids:
        assert f"wandb: offline run {run_id} already holds this finished run; nothing new to log" in again.stdout


# ---------------------------------------------------------------------------------------------------- in process
def sink_for(output_dir, *overrides, console=None):
    """A sink as ``RunContext`` makes it (offline unless ``overrides`` choose a mode)."""
    mode = [] if any(o.startswith("logger.wandb.mode=") for o in overrides) else ["logger.wandb.mode=offline"]
    cfg = build_run_config(compose_config([*mode, *overrides]))
    return WandbSink.create(SimpleNamespace(cfg=cfg, output_dir=output_dir, console=console))


def epoch(key, number, acc, phase="ticket"):
    return {"event": "epoch", "time": 0.0, "key": key, "round": 1, "phase": phase, "epoch": number, "epochs": 9,
            "step": 10 * number, "train_loss": 1.0 / number, "val_acc": acc, "test_acc": acc + 0.01, "density": 0.5,
            "lr": 0.1, "selectable": True}  # fmt: skip


PRUNE = {"event": "prune", "time": 0.0, "round": 2, "density": 0.25, "kept": 5, "total": 20,
         "layer_densities": {"fc1.weight": 0.3, "fc2.weight": 0.2}}  # fmt: skip


def test_an_offline_resume_relogs_every_epoch_record_from_the_start(tmp_path, wandb_home):
    """An attempt whose W&B data stopped after epoch record 1 (a kill lost 2-3, which metrics.jsonl has): offline
    there is no server to ask, so the next attempt re-logs records 0-3 (with the prune between 2 and 3), then
    continues at epoch_index 4. Read by epoch_index, last row wins, both attempts give metrics.jsonl."""
    first = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), first])
    tracker.log(**epoch("round01/ticket", 1, 0.5))
    tracker.log(**epoch("round01/ticket", 2, 0.6))
    first.close()
    first.close()  # idempotent
    first.log(epoch("round01/ticket", 3, 0.0))  # after close: ignored
    assert state_of(tmp_path)["epochs"] == 2 and state_of(tmp_path)["end"] is None
    for record in [epoch("round01/ticket", 3, 0.7), PRUNE, epoch("round02/ticket", 1, 0.4)]:
        append_jsonl(tmp_path / "metrics.jsonl", record)

    next_second()
    second = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), second])
    tracker.log(**epoch("round02/ticket", 2, 0.45))
    second.close(failed=True)

    run_id = run_id_of(tmp_path)
    old, new = finished_files(tmp_path, run_id)
    assert [r[STEP_METRIC] for r in epoch_rows(old)] == [0, 1]
    assert [(r[STEP_METRIC], r["key"], r["epoch"], r["ticket/val_acc"]) for r in epoch_rows(new)] == [
        (0, "round01/ticket", 1, 0.5),
        (1, "round01/ticket", 2, 0.6),
        (2, "round01/ticket", 3, 0.7),
        (3, "round02/ticket", 1, 0.4),
        (4, "round02/ticket", 2, 0.45),
    ]
    relogged_prune = epoch_rows(new)[3]
    assert relogged_prune["layer_density/fc1.weight"] == 0.3 and relogged_prune["prune/kept"] == 5
    assert relogged_prune["ticket/selectable"] == 1 and relogged_prune["optimizer_step"] == 10
    assert "prune/kept" not in epoch_rows(new)[2] and "prune/kept" not in epoch_rows(new)[4]
    rows = by_index(epoch_rows(old) + epoch_rows(new))
    assert [(r["key"], r["epoch"]) for r in rows] == [(r["key"], r["epoch"]) for r in epoch_records(tmp_path)]
    assert (exit_code_of(old), exit_code_of(new)) == (0, 1)
    assert state_of(tmp_path) == {"run_id": run_id, "mode": "offline", "epochs": 5, "end": None}


def test_online_resume_relogs_after_the_servers_last_epoch_index(tmp_path):
    """Online, the resumed run's summary says how far W&B got (no server here: the W&B run is a stand-in)."""
    logged = []
    fake = SimpleNamespace(resumed=True, summary={STEP_METRIC: 1}, log=logged.append)
    records_ = [epoch("round00/dense", 1, 0.1, "dense"), epoch("round00/dense", 2, 0.2, "dense"), PRUNE,
                epoch("round01/ticket", 1, 0.3)]  # fmt: skip
    sink = WandbSink(tmp_path, mode="online", resumed=True, records=records_)
    sink._run = fake
    assert sink._known_epochs() == 2
    sink._replay(sink._known_epochs())
    assert [(r[STEP_METRIC], r["key"], r["prune/kept"]) for r in logged] == [(2, "round01/ticket", 5)]
    for summary, known in (({}, 0), ({STEP_METRIC: 3}, 4)):
        sink._run = SimpleNamespace(resumed=True, summary=summary)
        assert sink._known_epochs() == known
    sink._run = SimpleNamespace(resumed=False, summary={STEP_METRIC: 3})  # a new run on the server: all of it
    assert sink._known_epochs() == 0
    sink._mode, sink._run = "offline", fake  # offline: never trusts anything
    assert sink._known_epochs() == 0


def finished_run_dir(tmp_path):
    """A directory whose run ended: metrics.jsonl, summary.json, config.yaml and masks, mirrored by one attempt."""
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "round_01.pt").write_bytes(b"mask 1")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "complete", "final": {"test_acc": 0.5}}))
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    sink = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), sink])
    tracker.log("run_start", data="x", prunable_weights=20)
    tracker.log(**epoch("round01/ticket", 1, 0.5))
    tracker.log("run_end", summary=str(tmp_path / "summary.json"), status="complete")
    sink.close()
    return tracker


def test_a_finished_run_run_again_starts_wandb_only_for_something_new(tmp_path, wandb_home):
    finished_run_dir(tmp_path)
    run_id, state, folders = run_id_of(tmp_path), state_of(tmp_path), offline_folders(tmp_path)
    assert state["epochs"] == 1 and state["end"] and len(folders) == 1

    # the same end again: nothing starts, nothing changes
    printed = []
    next_second()
    sink = sink_for(tmp_path, console=SimpleNamespace(print=printed.append))
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), sink])
    tracker.log("run_start", data="x", prunable_weights=20)
    tracker.log("run_end", summary=str(tmp_path / "summary.json"), status="complete")
    assert sink._run is None
    sink.close()
    assert printed == [f"wandb: offline run {run_id} already holds this finished run; nothing new to log"]
    assert offline_folders(tmp_path) == folders and state_of(tmp_path) == state

    # an end whose files changed: the run is resumed, re-logs its history, uploads new artifact versions
    (tmp_path / "summary.json").write_text(json.dumps({"status": "complete", "final": {"test_acc": 0.6}}))
    next_second()
    sink = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), sink])
    tracker.log("run_start", data="x", prunable_weights=20)
    assert sink._run is None
    tracker.log("run_end", summary=str(tmp_path / "summary.json"), status="complete")
    sink.close()
    (path,) = [p for p in finished_files(tmp_path, run_id) if p.parent.name not in folders]
    assert [r[STEP_METRIC] for r in epoch_rows(path)] == [0]
    assert summary_of(path)["test_acc"] == 0.6 and summary_of(path)["prunable_weights"] == 20
    assert sorted(artifacts_of(path)) == ["masks", "summary"]
    assert state_of(tmp_path)["end"] not in (None, state["end"])

    # a new epoch (a finished run never logs one, but a sink must not lose it): started, everything re-logged
    folders = offline_folders(tmp_path)
    next_second()
    sink = sink_for(tmp_path)
    Tracker([JsonlSink(tmp_path / "metrics.jsonl"), sink]).log(**epoch("round02/ticket", 1, 0.7))
    sink.close()
    (path,) = [p for p in finished_files(tmp_path, run_id) if p.parent.name not in folders]
    assert [(r[STEP_METRIC], r["key"]) for r in epoch_rows(path)] == [(0, "round01/ticket"), (1, "round02/ticket")]
    assert state_of(tmp_path)["epochs"] == 2 and state_of(tmp_path)["end"] is None  # this attempt did not end


def test_a_preempted_run_is_marked_preempting_before_it_leaves(tmp_path, wandb_home):
    """A preemption leaves through SystemExit (``lth_runner.preemption``), and the session closes its sinks as
    failed while it is in flight: the W&B run is marked preempting (a requeued job resumes it)."""
    sink = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), sink])
    tracker.log(**epoch("round00/dense", 1, 0.5, phase="dense"))
    tracker.log(**epoch("round00/dense", 2, 0.6, phase="dense"))
    try:
        raise SystemExit(128 + signal.SIGTERM)
    except SystemExit:
        sink.close(failed=True)
    (path,) = finished_files(tmp_path)
    assert len(records(path, "preempting")) == 1 and exit_code_of(path) == 1
    assert [r[STEP_METRIC] for r in epoch_rows(path)] == [0, 1]
    assert artifacts_of(path) == {}  # the run did not end
    assert state_of(tmp_path) == {"run_id": run_id_of(tmp_path), "mode": "offline", "epochs": 2, "end": None}


def test_a_failing_run_finishes_its_wandb_run_with_a_failure_exit_code(tmp_path, data_root, wandb_home):
    from lth_runner.session import run_experiment

    # the missing weights are found by the method, after the W&B run started (a missing dataset fails earlier, before
    # any file or W&B run exists)
    overrides = [*FAST, "method=l1", f"method.pretrained={tmp_path}/missing.pt", f"paths.data_root={data_root}"]
    cfg = build_run_config(compose_config([*overrides, "logger.console=none", "logger.wandb.mode=offline"]))
    with pytest.raises(UserError, match="method.pretrained"):
        run_experiment(cfg, tmp_path / "run")
    run_dir = tmp_path / "run"
    (path,) = finished_files(run_dir)
    assert exit_code_of(path) == 1
    assert epoch_rows(path) == [] and artifacts_of(path) == {}
    assert records(path, "preempting") == []
    assert state_of(run_dir)["end"] is None


def test_sink_failures_warn_and_never_raise(tmp_path, wandb_home):
    sink = sink_for(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("service went away\nsecond line")

    sink._run.log = broken
    with pytest.warns(RuntimeWarning, match=r"W&B logging failed \(RuntimeError: service went away\)"):
        sink.log(epoch("round00/dense", 1, 0.5, phase="dense"))
    sink.log(epoch("round00/dense", 2, 0.5, phase="dense"))  # warned once; still no exception
    finish = sink._run.finish
    sink._run.finish = broken
    with pytest.warns(RuntimeWarning, match="finishing the W&B run failed"):
        sink.close(failed=True)
    finish()


def test_artifact_failures_warn_and_never_raise(tmp_path, wandb_home):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "complete", "final": {"test_acc": 0.5}}))
    sink = sink_for(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    sink._run.log_artifact = broken
    with pytest.warns(RuntimeWarning, match=r"W&B artifacts \(masks, summary\) were not logged \(OSError: disk full\)"):
        sink.log({"event": "run_end", "summary": str(tmp_path / "summary.json"), "status": "complete"})
    sink.close()
    assert state_of(tmp_path)["end"] is None  # a re-run uploads them again


# ---------------------------------------------------------------------------------------------------- mode
NETRC_ENTRY = "machine api.wandb.ai\n  login user\n  password 0123456789abcdef0123456789abcdef01234567\n"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "offline"),  # the variable wins over credentials
        ({"WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_MODE": "dryrun"}, "offline"),  # W&B's alias
        ({"WANDB_MODE": "Online", "WANDB_API_KEY": "k" * 40}, "online"),
        ({"WANDB_API_KEY": "k" * 40}, "online"),  # no variable: credentials decide
        ({}, "offline"),
        ({"WANDB_API_KEY": ""}, "offline"),
    ],
)
def test_auto_mode_follows_wandb_mode_then_credentials(tmp_path, environ, expected):
    assert resolve_mode("auto", {"HOME": str(tmp_path), **environ}) == expected


def test_credentials_are_found_in_netrc_without_wandb(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert not has_credentials({"HOME": str(home)})
    (home / ".netrc").write_text(NETRC_ENTRY)
    assert has_credentials({"HOME": str(home)})
    assert resolve_mode("auto", {"HOME": str(home)}) == "online"
    # another W&B host (WANDB_BASE_URL) needs its own entry
    assert not has_credentials({"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.org"})
    other = tmp_path / "netrc"
    other.write_text(NETRC_ENTRY.replace("api.wandb.ai", "wandb.example.org"))
    environ = {"HOME": str(home), "NETRC": str(other), "WANDB_BASE_URL": "https://wandb.example.org"}
    assert has_credentials(environ)
    # an entry without a password, or a file netrc cannot parse, is no credential
    (home / ".netrc").write_text("machine api.wandb.ai login user\n")
    assert not has_credentials({"HOME": str(home)})
    (home / ".netrc").write_text("machine api.wandb.ai password\n")
    assert not has_credentials({"HOME": str(home)})


def test_explicit_modes_and_online_without_credentials(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_MODE": "online"}
    assert resolve_mode("offline", env) == "offline"  # the configured mode wins over WANDB_MODE
    assert resolve_mode("disabled", env) == "disabled"
    assert resolve_mode("online", {**env, "WANDB_API_KEY": "k" * 40}) == "online"
    with pytest.warns(RuntimeWarning, match="needs credentials"):
        assert resolve_mode("online", env) == "offline"  # W&B would prompt for a key
    with pytest.warns(RuntimeWarning, match="needs credentials"):
        assert resolve_mode("auto", env) == "offline"
    with pytest.raises(UserError, match="WANDB_MODE='sometimes' is not accepted"):
        resolve_mode("auto", {"WANDB_MODE": "sometimes"})


def test_no_sweep_group_outside_a_hydra_multirun():
    assert sweep_group(Path("/tmp/sweeps/x/3")) is None


@pytest.mark.parametrize(
    ("mode", "wandb_mode"),
    [("disabled", "offline"), ("auto", "disabled")],
)
def test_disabled_wandb_writes_nothing(tmp_path, data_root, monkeypatch, mode, wandb_mode):
    from lth_runner.session import run_experiment

    monkeypatch.setenv("WANDB_MODE", wandb_mode)
    cfg = build_run_config(compose_config(["debug=fast", "model=mlp", "dataset=mnist1d", "logger.console=none",
                                           f"paths.data_root={data_root}", "sparsity.rounds=1",
                                           f"logger.wandb.mode={mode}"]))  # fmt: skip
    summary = run_experiment(cfg, tmp_path)
    assert summary.status == "complete"
    assert not (tmp_path / "wandb").exists() and not (tmp_path / RUN_ID_FILE).exists()
    # the sink itself, asked directly: starts nothing, writes nothing, ignores events
    sink = sink_for(tmp_path / "direct", f"logger.wandb.mode={mode}")
    sink.log(epoch("round00/dense", 1, 0.5, phase="dense"))
    sink.close()
    assert not (tmp_path / "direct").exists()
