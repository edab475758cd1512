"""Distributed data parallel on the CPU (gloo, torchrun) and preemption by signal."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from lth_runner import distributed
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import UserError
from lth_runner.session import check_distributed
from lth_runner.sparse import Mask
from lth_runner.train import edge_overrides
from lth_runner.utils.io import read_jsonl
from tests.conftest import REPO, SMALL_LTH_RUN, run_cli, without_timings

COMMON = [*SMALL_LTH_RUN, "logger.console=plain"]


def torchrun(*args, data_root, timeout=300):
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lth_runner.train",
        *args,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(tmp_path, data_root):
    one = run_cli(*COMMON, "plugins=[tests.rank_dump]", f"hydra.run.dir={tmp_path / 'one'}", data_root=data_root)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*COMMON, "plugins=[tests.rank_dump]", f"hydra.run.dir={tmp_path / 'two'}", data_root=data_root)
    assert two.returncode == 0, two.stderr[-3000:]

    # the ranks trained the same network: identical masks and identical weights after every stage
    stages = sorted(p.name for p in (tmp_path / "two/ranks/rank0").iterdir())
    assert stages == sorted(p.name for p in (tmp_path / "two/ranks/rank1").iterdir()) and len(stages) == 3
    for stage in stages:
        rank0, rank1 = (torch.load(tmp_path / f"two/ranks/rank{r}/{stage}", weights_only=True) for r in (0, 1))
        assert Mask(rank0["mask"]) == Mask(rank1["mask"])
        assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])

    # and what one process trains with the same global batch (stated tolerance: masks overlap >= 99.9%,
    # accuracies within 0.5 points; measured here: identical)
    single, double = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    for a, b in zip(single["rounds"], double["rounds"]):
        assert a["kept"] == b["kept"]
        for field in ("final_test_acc", "best_val_acc"):
            assert abs(a["ticket"][field] - b["ticket"][field]) <= 0.005
    for i in (1, 2):
        a, b = (Mask.load(tmp_path / d / f"masks/round_0{i}.pt") for d in ("one", "two"))
        assert a.kept_overlap(b) >= 0.999
    assert not (tmp_path / "two/ranks/rank1/summary.json").exists()  # only rank 0 writes run files


def test_torchrun_ranks_share_one_output_directory():
    env = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc"}
    assert edge_overrides(["method=lth"], env) == [
        "hydra.run.dir=${paths.output_root}/runs/${name}/torchrun-abc",
        "hydra.sweep.dir=${paths.output_root}/sweeps/torchrun-abc",
    ]
    assert edge_overrides(["hydra.run.dir=/x"], env) == []
    with pytest.raises(UserError, match="pass hydra.run.dir=DIR"):
        edge_overrides([], {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"})
    assert edge_overrides([], {}) == []


def test_shutdown_without_a_process_group_does_nothing_and_can_be_repeated():
    assert not distributed.is_initialized()
    distributed.shutdown()
    distributed.shutdown(synchronize=False)
    distributed._shutdown_at_exit()
    assert not distributed.is_initialized()


def test_shutdown_leaves_the_process_group_and_joins_the_gloo_threads(tmp_path):
    import torch.distributed as dist

    def gloo_threads():
        names = []
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        return [n for n in names if n.startswith(("pt_gloo", "gloo"))]

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("threads are inspected through /proc")
    before = gloo_threads()
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        assert distributed.is_initialized() and gloo_threads()
        distributed.shutdown()
        assert not distributed.is_initialized()
        assert gloo_threads() == before  # joined while the interpreter is alive, not left to interpreter exit
        distributed.shutdown()  # idempotent
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_joining_a_group_registers_one_exit_handler(monkeypatch):
    registered = []
    monkeypatch.setattr(distributed, "_exit_handler_registered", False)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.setup("cpu")
    distributed.setup("cpu")
    assert registered == [distributed._shutdown_at_exit]


def test_the_exit_handler_never_raises(monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(distributed, "shutdown", fail)
    distributed._shutdown_at_exit()


def test_a_global_batch_the_ranks_cannot_share_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    cfg = build_run_config(compose_config(["trainer.batch_size=127"]))
    with pytest.raises(UserError) as err:
        check_distributed(cfg, torch.device("cpu"))
    assert str(err.value).startswith("trainer.batch_size=127 is not accepted: expected a multiple of the 2 processes")
    check_distributed(build_run_config(compose_config(["trainer.batch_size=128"])), torch.device("cpu"))


def test_the_preemption_signal_saves_the_exact_step_and_the_rerun_finishes_identically(tmp_path, data_root):
    args = [*COMMON, "trainer.checkpoint_every=1"]
    reference = run_cli(*args, f"hydra.run.dir={tmp_path / 'reference'}", data_root=data_root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    # 12 steps per epoch: step 17 is mid-way through the second epoch of round 1's ticket
    warned = run_cli(
        *args,
        "plugins=[tests.fault_injection]",
        f"hydra.run.dir={tmp_path / 'run'}",
        data_root=data_root,
        env={"LTH_SIGNAL_AT": "round01/ticket:17:SIGUSR2"},
    )
    assert warned.returncode == 128 + signal.SIGUSR2, warned.stderr[-2000:]
    assert warned.stderr.strip().splitlines()[-1] == (
        "lth-run: preempted (SIGUSR2): saved a checkpoint at step 17 of round01/ticket; run the same command again "
        "to resume"
    )
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=False)
    assert checkpoint["key"] == "round01/ticket" and checkpoint["step"] == 17
    assert checkpoint["partial_totals"] is not None  # the epoch's running sums travel with it
    resumed = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("reference", "run"))
    assert without_timings(first) == without_timings(second)

    def epochs(directory):  # the last record per (stage, epoch) counts, as the report reads them
        records = {}
        for r in read_jsonl(tmp_path / directory / "metrics.jsonl"):
            if r["event"] == "epoch":
                records[(r["key"], r["epoch"])] = (r["train_loss"], r["train_acc"], r["val_acc"], r["test_acc"])
        return records

    assert epochs("run") == epochs("reference")  # including the train loss of the epoch that was cut in two


def one_and_two_processes(tmp_path, overrides, data_root) -> tuple[dict, dict]:
    """``overrides`` run by one process (``tmp_path/one``) and by two under torchrun (``tmp_path/two``), with the same
    global batch: their summaries."""
    one = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'one'}", data_root=data_root)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*overrides, f"hydra.run.dir={tmp_path / 'two'}", data_root=data_root)
    assert two.returncode == 0, two.stderr[-3000:]
    return tuple(json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))


def test_a_mask_search_on_two_processes_finds_what_one_process_finds(tmp_path, data_root):
    """SR-popup under DDP: the scores' gradients are averaged, every rank swaps the same entries, and the result
    matches one process with the same global batch (measured: the same mask, the same accuracies)."""
    search = [*COMMON, "method=sr_popup", "method.pretrain_epochs=2", "trainer.epochs=2"]
    single, double = one_and_two_processes(tmp_path, search, data_root)
    a, b = (Mask.load(tmp_path / d / "masks" / "search.pt") for d in ("one", "two"))
    assert a.kept_overlap(b) >= 0.99
    assert abs(single["final"]["test_acc"] - double["final"]["test_acc"]) <= 0.01


@pytest.mark.slow
def test_rigl_on_two_processes_moves_the_mask_as_one_process_does(tmp_path, data_root):
    """RigL under DDP: the dense gradient is the all-reduced one, rank 0's new mask is broadcast, and the masks
    follow one process with the same global batch (measured: the same final mask, the same accuracies)."""
    single, double = one_and_two_processes(tmp_path, [*COMMON, "method=rigl", "method.delta_t=4"], data_root)
    a, b = (Mask.load(tmp_path / d / "masks" / "final.pt") for d in ("one", "two"))
    assert a.kept_overlap(b) >= 0.99 and a.num_kept() == b.num_kept()
    assert Mask.load(tmp_path / "one/masks/initial.pt") != a  # the mask moved
    assert abs(single["final"]["test_acc"] - double["final"]["test_acc"]) <= 0.01
