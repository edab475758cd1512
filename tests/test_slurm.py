"""``lth-run -m hydra/launcher=slurm`` against a real SLURM cluster (``sudo scripts/slurm_testbed.sh up`` starts a
single-node one on this machine): a sweep comes back complete, and a job that dies or is cancelled fails the sweep
instead of leaving ``lth-run`` waiting.

submitit pickles the task and the job runs ``<this interpreter> -m submitit.core._submit`` from the repository, so
the jobs import the same code; the environment (``LTH_DATA_ROOT``, ``LTH_KILL_AT``) reaches them through sbatch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, SMALL_LTH_RUN, without_timings


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        return "no SLURM client (sbatch/sacct) on PATH: start one with scripts/slurm_testbed.sh up"
    try:
        command = ["sinfo", "-h", "-t", "idle,mixed", "-o", "%n"]
        idle = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo did not answer (is the controller up? scripts/slurm_testbed.sh status): {err}"
    if idle.returncode != 0 or not idle.stdout.strip():
        return f"SLURM has no idle node (sinfo: {(idle.stderr or idle.stdout).strip() or 'nothing'})"
    return None


_PROBLEM = _cluster_problem()
if _PROBLEM:
    pytest.skip(_PROBLEM, allow_module_level=True)

pytestmark = [pytest.mark.slurm]

# Each job: one CPU, 1 GB, a 10-minute limit.
JOB = [
    "hydra/launcher=slurm",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "logger.console=none",
    "model=mlp",
    "dataset=mnist1d",
]
FAST = "debug=fast"  # the two-round debug preset (80% sparsity by default)
REQUEUE_SETTLE_S = 3.0  # how long a requeued job stays pending before the test starts it


def sweep(tmp_path: Path, data_root: Path, *overrides: str, env: dict[str, str] | None = None):
    """Start ``lth-run -m`` with the SLURM launcher, with this venv's python first on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        LTH_DATA_ROOT=str(data_root),
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    command = [sys.executable, "-m", "lth_runner.train", "-m", *JOB, f"hydra.sweep.dir={tmp_path}", *overrides]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"lth-run still waiting after {timeout:.0f}s:\n{err[-3000:]}") from None
    return process.returncode, out, err


def slurm_job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs (``123`` or ``123_4`` for array tasks), from submitit's log folders."""
    folders = sweep_dir / ".submitit"
    return sorted(
        (p.name for p in folders.iterdir() if p.is_dir() and any(p.glob("*_log.out"))),
        key=lambda name: [int(x) for x in name.split("_")],
    )


def accounting_states(job_ids: list[str], timeout: float = 30) -> dict[str, str]:
    """``sacct`` state of each job, once every one has a final state (the accounting record lags a little)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        states = dict(line.split("|")[:2] for line in listing.splitlines() if "|" in line)
        states = {job: states.get(job, "").split(" ")[0] for job in job_ids}
        if all(s and s not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING") for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct has no final state after {timeout}s: {states}")
        time.sleep(1)


def test_a_sweep_runs_each_job_on_the_cluster_and_returns_every_result(tmp_path, data_root):
    process = sweep(tmp_path, data_root, FAST, "seed=0,1,2")
    code, out, err = finish(process, timeout=300)
    assert code == 0, err[-3000:]
    assert "Submitit 'slurm' sweep output dir" in out + err

    summaries = {}
    for path in tmp_path.glob("*/summary.json"):  # <sweep>/<hydra.sweep.subdir>/summary.json
        summary = json.loads(path.read_text())
        summaries[summary["seed"]] = summary
    assert sorted(summaries) == [0, 1, 2]
    for summary in summaries.values():
        assert summary["status"] == "complete" and summary["method"] == "lth_iter"
        assert round(summary["final"]["density"], 6) == 0.2  # sparsity=80 (default) reached in two rounds
        assert len(summary["rounds"]) == 3  # dense + 2 pruning rounds (debug=fast)
    # Three different seeds, three different networks: no job ran another's configuration.
    assert len({json.dumps(s["rounds"][0], sort_keys=True) for s in summaries.values()}) == 3

    jobs = slurm_job_ids(tmp_path)
    assert len(jobs) == 3 and len({job.split("_")[0] for job in jobs}) == 1  # one job array of three tasks
    assert accounting_states(jobs) == dict.fromkeys(jobs, "COMPLETED")


def test_a_job_killed_on_the_node_fails_the_sweep_instead_of_hanging(tmp_path, data_root):
    # SIGKILL from inside the job after 2 optimizer steps: no result file, SLURM records the job FAILED.
    process = sweep(
        tmp_path, data_root, FAST, "seed=0", "plugins=[tests.fault_injection]", env={"LTH_KILL_AT": "round00/dense:2"}
    )
    code, out, err = finish(process, timeout=180)
    assert code != 0
    assert "has not produced any output (state: FAILED)" in err, err[-3000:]

    (job,) = slurm_job_ids(tmp_path)
    assert accounting_states([job]) == {job: "FAILED"}
    # Killed inside its first stage: the run had started (state.json, for a resume) and had finished nothing.
    (state,) = tmp_path.glob("*/state.json")
    assert json.loads(state.read_text())["completed"] == {}
    assert not list(tmp_path.glob("*/summary.json"))


def test_a_cancelled_job_fails_the_sweep_instead_of_hanging(tmp_path, data_root):
    name = f"lth-test-{uuid.uuid4().hex[:8]}"  # this test's job only, whatever else the cluster runs
    process = sweep(tmp_path, data_root, FAST, "seed=0", "trainer.epochs=100000", f"hydra.launcher.name={name}")
    try:
        deadline = time.monotonic() + 120
        job = ""
        while time.monotonic() < deadline:
            listing = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True)
            match = re.match(r"(\S+) RUNNING", listing.stdout.strip())
            if match:
                job = match[1]
                break
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.5)
        assert job, f"job {name} never started"
        time.sleep(2)  # let it train
        subprocess.run(["scancel", job], check=True)
        # SIGTERM, then SIGKILL after KillWait (submitit ignores SIGTERM); submitit sees the state through sacct.
        code, out, err = finish(process, timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code != 0
    assert "has not produced any output (state: CANCELLED" in err, err[-3000:]
    assert accounting_states([job]) == {job: "CANCELLED"}


DDP_RUN = SMALL_LTH_RUN


def _local_reference(tmp_path: Path, data_root: Path, *overrides: str) -> Path:
    from tests.conftest import run_cli

    out = tmp_path / "reference"
    result = run_cli(*DDP_RUN, "logger.console=none", *overrides, f"hydra.run.dir={out}", data_root=data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _job_dir(sweep_dir: Path) -> Path:
    (job,) = [p.parent for p in sweep_dir.glob("*/summary.json")]
    return job


def test_a_two_task_job_trains_with_ddp_what_one_process_trains(tmp_path, data_root):
    import torch

    from lth_runner.sparse import Mask

    reference = _local_reference(tmp_path, data_root)
    process = sweep(
        tmp_path / "sweep",
        data_root,
        *DDP_RUN,
        "trainer.devices=2",
        "hydra.launcher.mem_gb=2",
        "plugins=[tests.rank_dump]",
        "seed=0",
    )
    code, out, err = finish(process, timeout=300)
    assert code == 0, err[-3000:]
    job = _job_dir(tmp_path / "sweep")
    stages = sorted(p.name for p in (job / "ranks/rank0").iterdir())
    assert len(stages) == 3 and stages == sorted(p.name for p in (job / "ranks/rank1").iterdir())
    for stage in stages:  # both tasks trained the same network
        rank0, rank1 = (torch.load(job / f"ranks/rank{r}/{stage}", weights_only=True) for r in (0, 1))
        assert Mask(rank0["mask"]) == Mask(rank1["mask"])
        assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (job, reference))
    for a, b in zip(ours["rounds"], theirs["rounds"]):  # stated tolerance: 0.5 points (measured: equal)
        assert a["kept"] == b["kept"] and abs(a["ticket"]["final_test_acc"] - b["ticket"]["final_test_acc"]) <= 0.005


def test_a_preempted_job_is_requeued_and_finishes_with_the_uninterrupted_summary(tmp_path, data_root):
    reference = _local_reference(tmp_path, data_root)
    # The job warns itself exactly as SLURM's --signal would, mid-way through round 1's second epoch.
    process = sweep(
        tmp_path / "sweep",
        data_root,
        *DDP_RUN,
        "plugins=[tests.fault_injection]",
        "seed=0",
        env={"LTH_SIGNAL_AT": "round01/ticket:17:SIGUSR2"},
    )
    first_seen_pending: dict[str, float] = {}
    requeued = set()
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        # A requeued job waits for Slurm's begin-time delay; start it sooner, but not in the second of the requeue:
        # slurmd refuses a credential created no later than the old one's revocation ("Job credential revoked").
        pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True)
        for line in pending.stdout.splitlines():
            job_id, reason = line.split(maxsplit=1)
            if "BeginTime" not in reason:
                continue
            first_seen_pending.setdefault(job_id, time.monotonic())
            if time.monotonic() - first_seen_pending[job_id] >= REQUEUE_SETTLE_S:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
                requeued.add(job_id)
        time.sleep(1)
    code, out, err = finish(process, timeout=max(1, deadline - time.monotonic()))
    assert code == 0, err[-3000:]
    assert requeued, "the job was never requeued"
    job = _job_dir(tmp_path / "sweep")
    messages = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("text", "").startswith("preempted: saved a checkpoint at step 17") for m in messages)
    assert sum(1 for m in messages if m["event"] == "run_start") == 2  # started, requeued, resumed
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (job, reference))
    assert without_timings(ours) == without_timings(theirs)
