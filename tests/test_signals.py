"""Signals end a run cleanly: Ctrl-C (SIGINT) and SIGTERM save a checkpoint of the exact optimizer step and exit
with one line and code 128 + signal; a second Ctrl-C stops at once; no signal can corrupt or drop the last good
checkpoint, and the re-run resumes to the summary an uninterrupted run writes."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from lth_runner.utils.io import save_torch_atomic
from tests.conftest import SMALL_LTH_RUN, run_cli, without_timings

COMMON = [*SMALL_LTH_RUN, "logger.console=plain"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("reference")
    result = run_cli(*COMMON, f"hydra.run.dir={run_dir}", data_root=data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((run_dir / "summary.json").read_text())


def interrupted(run_dir, data_root, point):
    return run_cli(
        *COMMON,
        "plugins=[tests.fault_injection]",
        f"hydra.run.dir={run_dir}",
        data_root=data_root,
        env={"LTH_SIGNAL_AT": point},
    )


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_exact_step_and_exits_with_one_line(tmp_path, data_root, reference, name):
    # 12 steps per epoch: step 17 is mid-way through the second epoch of round 1's ticket
    result = interrupted(tmp_path, data_root, f"round01/ticket:17:{name}")
    number = getattr(signal, name)
    assert result.returncode == 128 + number, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"lth-run: {'interrupted' if name == 'SIGINT' else 'stopped'} ({name}): saved a checkpoint at step 17 of "
        f"round01/ticket; run the same command again to resume"
    ]
    assert "Traceback" not in result.stdout + result.stderr and "KeyboardInterrupt" not in result.stderr
    checkpoint = torch.load(tmp_path / "checkpoints/last.pt", weights_only=False)
    assert checkpoint["key"] == "round01/ticket" and checkpoint["step"] == 17
    resumed = run_cli(*COMMON, f"hydra.run.dir={tmp_path}", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert without_timings(json.loads((tmp_path / "summary.json").read_text())) == without_timings(reference)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, data_root, reference):
    result = interrupted(tmp_path, data_root, "round01/ticket:17:SIGINT:2")
    assert result.returncode == 130, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["lth-run: interrupted"]
    checkpoint = torch.load(tmp_path / "checkpoints/last.pt", weights_only=False)
    assert checkpoint["key"] == "round01/ticket" and checkpoint["step"] == 12  # the end of epoch 1, intact
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    resumed = run_cli(*COMMON, f"hydra.run.dir={tmp_path}", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert without_timings(json.loads((tmp_path / "summary.json").read_text())) == without_timings(reference)


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_torch_atomic(path, {"step": 1})

    def half_then_interrupt(obj, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"\x80\x02partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_torch_atomic(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
