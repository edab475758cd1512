"""The Weights & Biases sink, offline (no network here): what ``lth-run`` writes into W&B's own run files (read back
with W&B's protobuf records), resuming into the same W&B run, failures, mode resolution, and ``disabled``.

``tests/conftest.py`` sets ``WANDB_MODE=disabled`` for the session; every test here that wants W&B turns it on
explicitly (``logger.wandb.mode=offline`` and/or ``WANDB_MODE`` in the subprocess environment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import UserError
from lth_runner.tracking.tracker import JsonlSink, Tracker
from lth_runner.tracking.wandb_records import history_rows, read_run_file, run_files
from lth_runner.tracking.wandb_sink import RUN_ID_FILE, WandbSink, has_credentials, resolve_mode, sweep_group
from lth_runner.utils.io import append_jsonl, read_jsonl
from tests.conftest import REPO

FAST = ["debug=fast", "logger.console=plain", "trainer.num_threads=1"]


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


def epoch_rows(path):
    return [row for row in history_rows(path) if "key" in row]


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


# ---------------------------------------------------------------------------------------------------- CLI runs
def test_an_offline_run_mirrors_metrics_jsonl_into_wandb(tmp_path, data_root, wandb_home):
    run_dir = tmp_path / "run"
    result = lth_run(
        data_root,
        wandb_home,
        "trainer.epochs=2",
        "seed=3",
        "method.controls=[reinit]",
        "logger.wandb.mode=offline",
        "logger.wandb.tags=[smoke]",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = run_id_of(run_dir)
    (path,) = run_files(run_dir, run_id)
    assert path.parent.name.startswith("offline-run-") and path.parent.name.endswith(f"-{run_id}")
    assert f"wandb: started offline run {run_id}" in result.stdout

    # history: one row per epoch record, same order, same numbers, step = epoch record number
    epochs = epoch_records(run_dir)
    rows = epoch_rows(path)
    assert len(epochs) == len(rows) == 10  # dense 2 + (ticket 2 + reinit 2) x 2 rounds
    assert [r["_step"] for r in rows] == list(range(10))
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
    assert run.display_name == "run" and run.run_id == run_id
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

    resumed = lth_run(data_root, wandb_home, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_id_of(run_dir) == run_id and f"wandb: resumed offline run {run_id}" in resumed.stdout
    paths = run_files(run_dir, run_id)
    assert len(paths) == 2 and all(p.name == f"run-{run_id}.wandb" for p in paths)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2  # no run under another id
    assert [exit_code_of(p) for p in paths] == [None, 0]  # the killed attempt never finished

    # the union of both attempts' histories is metrics.jsonl: every step once, in order, nothing missing
    rows = [row for path in paths for row in epoch_rows(path)]
    epochs = epoch_records(run_dir)
    assert len(epochs) == 9
    assert sorted(r["_step"] for r in rows) == list(range(9))
    rows.sort(key=lambda r: r["_step"])
    assert dedup([comparable_row(r) for r in rows]) == dedup([comparable_record(r) for r in epochs])
    assert [comparable_row(r) for r in rows] == [comparable_record(r) for r in epochs]


def test_a_failing_run_finishes_its_wandb_run_with_a_failure_exit_code(tmp_path, data_root, wandb_home):
    run_dir = tmp_path / "run"
    # the missing dataset is found by the method, after the W&B run started
    result = lth_run(data_root, wandb_home, "dataset=imagefolder", f"dataset.root={tmp_path}/nowhere",
                     "logger.wandb.mode=offline", f"hydra.run.dir={run_dir}")  # fmt: skip
    assert result.returncode == 2 and "lth-run: error: dataset imagefolder not found" in result.stderr
    (path,) = run_files(run_dir, run_id_of(run_dir))
    assert exit_code_of(path) == 1
    assert epoch_rows(path) == []
    assert records(path, "preempting") == []


def test_a_preempted_run_is_marked_preempting_before_it_leaves(tmp_path, data_root, wandb_home):
    run_dir = tmp_path / "run"
    # SIGTERM outside submitit: checkpoint at the next step, then exit (a requeued job would resume the W&B run)
    result = lth_run(data_root, wandb_home, "trainer.epochs=3", "plugins=[tests.fault_injection]",
                     f"hydra.run.dir={run_dir}", env={"LTH_SIGNAL_AT": "round01/ticket:6:SIGTERM"})  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM and "preempted" in result.stdout
    (path,) = run_files(run_dir, run_id_of(run_dir))
    assert len(records(path, "preempting")) == 1 and exit_code_of(path) == 1
    assert [r["_step"] for r in epoch_rows(path)] == [0, 1, 2, 3]


def test_a_sweep_job_is_grouped_by_its_sweep_directory(tmp_path, data_root, wandb_home):
    sweep_dir = tmp_path / "sweep-lr"
    result = lth_run(
        data_root, wandb_home, "optim.lr=0.05", "sparsity.rounds=1", f"hydra.sweep.dir={sweep_dir}", multirun=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (job_dir,) = (p.parent for p in sweep_dir.glob(f"*/{RUN_ID_FILE}"))  # the job's directory, however named
    (path,) = run_files(job_dir, run_id_of(job_dir))
    (run,) = records(path, "run")
    assert run.run_group == "sweep-lr" and run.display_name == job_dir.name
    assert config_of(path)["optim"]["lr"] == 0.05


# ---------------------------------------------------------------------------------------------------- in process
def sink_for(output_dir, *overrides):
    cfg = build_run_config(compose_config(["logger.wandb.mode=offline", *overrides]))
    return WandbSink.create(SimpleNamespace(cfg=cfg, output_dir=output_dir, console=None))


def epoch(key, number, acc, phase="ticket"):
    return {"event": "epoch", "time": 0.0, "key": key, "round": 1, "phase": phase, "epoch": number, "epochs": 9,
            "step": 10 * number, "train_loss": 1.0 / number, "val_acc": acc, "test_acc": acc + 0.01, "density": 0.5,
            "lr": 0.1, "selectable": True}  # fmt: skip


def test_a_resumed_sink_relogs_exactly_what_wandb_lost(tmp_path, wandb_home):
    """An attempt whose W&B data stopped at step 1 (a kill lost steps 2-3, which metrics.jsonl has): the next attempt
    re-logs steps 2 and 3 (with the prune between them), then continues at step 4."""
    first = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), first])
    tracker.log(**epoch("round01/ticket", 1, 0.5))
    tracker.log(**epoch("round01/ticket", 2, 0.6))
    first.close()
    first.close()  # idempotent
    first.log(epoch("round01/ticket", 3, 0.0))  # after close: ignored
    lost = [epoch("round01/ticket", 3, 0.7),
            {"event": "prune", "time": 0.0, "round": 2, "density": 0.25, "kept": 5, "total": 20,
             "layer_densities": {"fc1.weight": 0.3, "fc2.weight": 0.2}},
            epoch("round02/ticket", 1, 0.4)]  # fmt: skip
    for record in lost:
        append_jsonl(tmp_path / "metrics.jsonl", record)

    second = sink_for(tmp_path)
    tracker = Tracker([JsonlSink(tmp_path / "metrics.jsonl"), second])
    tracker.log(**epoch("round02/ticket", 2, 0.45))
    second.close(failed=True)

    run_id = run_id_of(tmp_path)
    old, new = run_files(tmp_path, run_id)
    assert [r["_step"] for r in epoch_rows(old)] == [0, 1]
    assert [(r["_step"], r["key"], r["epoch"], r["ticket/val_acc"]) for r in epoch_rows(new)] == [
        (2, "round01/ticket", 3, 0.7),
        (3, "round02/ticket", 1, 0.4),
        (4, "round02/ticket", 2, 0.45),
    ]
    relogged_prune = epoch_rows(new)[1]
    assert relogged_prune["layer_density/fc1.weight"] == 0.3 and relogged_prune["prune/kept"] == 5
    assert relogged_prune["ticket/selectable"] == 1 and relogged_prune["optimizer_step"] == 10
    assert (exit_code_of(old), exit_code_of(new)) == (0, 1)
    assert len(epoch_records(tmp_path)) == 5


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
    cfg = build_run_config(compose_config(["debug=fast", "logger.console=none", f"paths.data_root={data_root}",
                                           "sparsity.rounds=1", f"logger.wandb.mode={mode}"]))  # fmt: skip
    summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "complete"
    assert not (tmp_path / "wandb").exists() and not (tmp_path / RUN_ID_FILE).exists()
