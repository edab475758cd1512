"""``lth-run`` end to end in a subprocess: the files and numbers a run writes, and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lth_runner.sparse import Mask, geometric_densities, round_counts
from lth_runner.utils.io import read_jsonl
from tests.conftest import REPO, without_timings

# The demo recipe, shrunk: 2 rounds to 80% sparsity, 3 epochs per stage, ticket and re-initialisation control.
SMALL = [
    "experiment=demo",
    "trainer.epochs=3",
    "sparsity=80",
    "sparsity.rounds=2",
    "dataset.num_samples=2000",
    "logger.console=plain",
    "trainer.num_threads=1",
]
PRUNABLE = 40 * 200 + 200 * 200 + 200 * 10  # the demo MLP's weights


def lth_run(run_dir, data_root, *extra, env=None):
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root), PYTHONUNBUFFERED="1", **(env or {}))
    command = [sys.executable, "-m", "lth_runner.train", *SMALL, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_writes_its_config_metrics_summary_masks_and_plot(tmp_path, data_root):
    run_dir = tmp_path / "run"
    result = lth_run(run_dir, data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 2 ticket" in result.stdout and "reinit test %" in result.stdout

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["prunable_weights"] == PRUNABLE
    expected_kept = round_counts(PRUNABLE, geometric_densities(0.8, 2))
    assert [r["kept"] for r in summary["rounds"]] == [PRUNABLE, *expected_kept]
    assert all(set(r["controls"]) == {"reinit"} for r in summary["rounds"][1:])
    assert summary["cost"]["stages"] == 5 and summary["cost"]["epochs_total"] == 15

    masks = [Mask.load(run_dir / "masks" / f"round_{i:02d}.pt") for i in (1, 2)]
    assert [m.num_kept() for m in masks] == expected_kept
    for name in masks[0]:
        assert not (masks[1][name] & ~masks[0][name]).any()  # IMP never regrows a pruned weight

    records = read_jsonl(run_dir / "metrics.jsonl")
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 15
    assert {"round", "epoch", "phase", "train_loss", "val_acc", "test_acc", "density", "lr", "elapsed"} <= set(
        epochs[0]
    )
    for entry in summary["rounds"]:  # summary numbers are the logged ones
        stage = [r for r in epochs if r["round"] == entry["round"] and r["phase"] in ("dense", "ticket")]
        best = max(stage, key=lambda r: r["val_acc"])
        assert entry["ticket"]["best_val_test_acc"] == best["test_acc"]
        assert entry["ticket"]["final_test_acc"] == stage[-1]["test_acc"]
        assert abs(stage[-1]["density"] - entry["density"]) < 1e-12

    assert "hidden:" in (run_dir / "config.yaml").read_text()
    assert (run_dir / ".hydra" / "overrides.yaml").exists()
    assert (run_dir / "plots" / "accuracy_vs_density.png").stat().st_size > 1000
    last = summary["final"]["key"].replace("/", "_")  # earlier rounds' weights released, the ticket's kept (analysis)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", f"{last}.final.pt"]


def test_a_run_killed_mid_stage_resumes_to_the_same_summary(tmp_path, data_root):
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    assert lth_run(reference_dir, data_root).returncode == 0

    # 12 steps per epoch: step 30 is mid-way through the third and last epoch of round 1's ticket
    killed = lth_run(run_dir, data_root, "plugins=[tests.fault_injection]", env={"LTH_KILL_AT": "round01/ticket:30"})
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    resumed = lth_run(run_dir, data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(resumed)" in resumed.stdout
    reference = json.loads((reference_dir / "summary.json").read_text())
    assert without_timings(json.loads((run_dir / "summary.json").read_text())) == without_timings(reference)
    for i in (1, 2):
        assert Mask.load(run_dir / "masks" / f"round_{i:02d}.pt") == Mask.load(
            reference_dir / "masks" / f"round_{i:02d}.pt"
        )
    records = read_jsonl(run_dir / "metrics.jsonl")
    dense_epochs = [r for r in records if r["event"] == "epoch" and r["round"] == 0]
    assert len(dense_epochs) == 3  # the finished dense stage was not trained again
    restarts = [r for r in records if r["event"] == "stage_start" and r["key"] == "round01/ticket"]
    assert [r["resumed"] for r in restarts] == [False, True] and restarts[1]["start_epoch"] == 2


def test_resuming_with_a_different_configuration_is_refused(tmp_path, data_root):
    run_dir = tmp_path / "run"
    assert lth_run(run_dir, data_root, "trainer.epochs=1").returncode == 0
    refused = lth_run(run_dir, data_root, "trainer.epochs=2")
    assert refused.returncode == 2
    assert "holds a run with a different configuration (trainer.epochs: 1 -> 2)" in refused.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"  # nothing was lost
    assert torch.load(run_dir / "masks" / "round_01.pt", weights_only=True)["masks"]


def test_a_run_started_before_an_option_existed_resumes_when_the_option_is_at_its_default(tmp_path, data_root):
    run_dir = tmp_path / "run"
    assert lth_run(run_dir, data_root, "trainer.epochs=1").returncode == 0
    state = json.loads((run_dir / "state.json").read_text())
    del state["fingerprint"]["dataset.label_noise"]  # as written by a version without the option
    (run_dir / "state.json").write_text(json.dumps(state))
    assert lth_run(run_dir, data_root, "trainer.epochs=1").returncode == 0
    (run_dir / "state.json").write_text(json.dumps(state))
    refused = lth_run(run_dir, data_root, "trainer.epochs=1", "dataset.label_noise=0.2")
    assert refused.returncode == 2 and "dataset.label_noise: None -> 0.2" in refused.stderr


def test_a_sweep_runs_every_combination_in_its_own_directory(tmp_path, data_root):
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lth_runner.train",
            "-m",
            "debug=fast",
            "model=mlp",
            "dataset=mnist1d",
            "method=lth,lth_iter",
            "sparsity=50,90",
            f"hydra.sweep.dir={tmp_path}",
            "logger.console=none",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    common = "dataset=mnist1d,debug=fast"
    jobs = [f"0_{common},method=lth,model=mlp,sparsity=50", f"1_{common},method=lth,model=mlp,sparsity=90"]
    jobs += [f"2_{common},method=lth_iter,model=mlp,sparsity=50", f"3_{common},method=lth_iter,model=mlp,sparsity=90"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")) == jobs
    summaries = [json.loads((tmp_path / job / "summary.json").read_text()) for job in jobs]
    assert [(s["method"], s["target_sparsity"]) for s in summaries] == [
        ("lth", 0.5),
        ("lth", 0.9),
        ("lth_iter", 0.5),
        ("lth_iter", 0.9),
    ]
    assert all(s["status"] == "complete" for s in summaries)
    assert [round(s["final"]["density"], 6) for s in summaries] == [0.5, 0.1, 0.5, 0.1]


@pytest.mark.slow
def test_killed_at_random_moments_until_done_it_ends_with_the_uninterrupted_summary(tmp_path, data_root):
    """SIGKILL at wall-clock moments drawn at random (seeded), so kills land anywhere: mid-step, while pruning,
    while writing a mask or the summary, between stages. Each restart resumes; the end result is the same."""
    import random

    overrides = [
        "model=mlp",
        "dataset=mnist1d",
        "sparsity.rounds=3",
        "method.controls=[reinit,random_prune]",
        "trainer.epochs=8",
        "dataset.num_samples=6000",
    ]
    reference = lth_run(tmp_path / "reference", data_root, *overrides)
    assert reference.returncode == 0, reference.stderr[-2000:]
    rng, kills, run_dir = random.Random(0), 0, tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "lth_runner.train", *SMALL, f"hydra.run.dir={run_dir}", *overrides]

    def work_logged() -> int:  # records of work done (not the run_start each attempt writes before its imports end)
        return sum('"run_start"' not in line for line in metrics.read_text().splitlines()) if metrics.exists() else 0

    for _ in range(60):
        logged = work_logged()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # past start-up once it logs some work; then the kill lands at a random moment of the work
        while process.poll() is None and work_logged() <= logged:
            time.sleep(0.02)
        if process.poll() is None:
            time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is None:
            process.kill()
            process.wait()
            kills += 1
            continue
        assert process.returncode == 0, process.stderr.read().decode()[-2000:]
        break
    assert kills >= 3  # the run really was interrupted several times
    assert without_timings(json.loads((run_dir / "summary.json").read_text())) == without_timings(
        json.loads((tmp_path / "reference" / "summary.json").read_text())
    )
    for name in ("round_01", "round_02", "round_03", "round_03_random"):
        assert Mask.load(run_dir / "masks" / f"{name}.pt") == Mask.load(tmp_path / "reference" / "masks" / f"{name}.pt")
