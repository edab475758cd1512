"""LTH and LTH-Iter through the library API: counts, rewinding, controls, scopes."""

from __future__ import annotations

import pytest
import torch

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, kept_count
from lth_runner.utils.io import read_jsonl
from tests.conftest import QUIET_MNIST1D

BASE = QUIET_MNIST1D
PRUNABLE = 40 * 32 + 32 * 32 + 32 * 10


def run(tmp_path, data_root, *overrides):
    cfg = build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))
    return run_experiment(cfg, tmp_path).to_dict(), tmp_path


def test_one_shot_lth_prunes_straight_to_the_exact_target(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method=lth", "sparsity=80")
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["kept"] == kept_count(PRUNABLE, 0.2) == Mask.load(out / "masks/round_01.pt").num_kept()
    assert summary["final"]["density"] == pytest.approx(0.2, abs=1 / PRUNABLE)


def test_iteration_rewinding_restarts_every_round_from_step_k(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method.rewind_to=5", "method.rewind_unit=iteration", "sparsity.rounds=2")
    rewind = torch.load(out / "checkpoints/rewind.pt", weights_only=False)
    assert rewind["step"] == 5
    steps_per_epoch = -(-720 // 64)  # 1000 generated, 800 train, 10% of those for validation
    ends = {r["key"]: r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "stage_end"}
    assert ends["round00/dense"]["steps"] == ends["round02/ticket"]["steps"] == 2 * steps_per_epoch
    starts = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "stage_start" and r["phase"] == "ticket"]
    assert all(r["start_epoch"] == 0 for r in starts)  # step 5 lies inside the first epoch
    first_ticket_epoch = next(
        r for r in read_jsonl(out / "metrics.jsonl") if r.get("key") == "round01/ticket" and r["event"] == "epoch"
    )
    assert first_ticket_epoch["step"] == steps_per_epoch  # 5 steps were skipped: the epoch ends where dense did


def test_controls_keep_the_ticket_structure(tmp_path, data_root):
    summary, out = run(
        tmp_path,
        data_root,
        "sparsity=90",
        "sparsity.rounds=2",
        "method.controls=[reinit,random_prune]",
        "method.control_rounds=last",
    )
    assert summary["rounds"][1]["controls"] == {}
    final = summary["rounds"][2]
    assert set(final["controls"]) == {"reinit", "random_prune"}
    ticket, random = Mask.load(out / "masks/round_02.pt"), Mask.load(out / "masks/round_02_random.pt")
    assert random.layer_kept() == ticket.layer_kept() and random != ticket
    for result in final["controls"].values():
        assert result["density"] == pytest.approx(final["density"])


def test_layerwise_scope_with_an_excluded_classifier(tmp_path, data_root):
    _, out = run(
        tmp_path, data_root, "method=lth", "sparsity=50", "sparsity.scope=layerwise", "sparsity.exclude_last=true"
    )
    mask = Mask.load(out / "masks/round_01.pt")
    assert mask.names() == ["fc1.weight", "fc2.weight"]
    assert mask.layer_kept() == {"fc1.weight": 640, "fc2.weight": 512}


def test_pruning_from_the_best_validation_epoch(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method=lth", "method.prune_from=best_val")
    assert summary["status"] == "complete" and (out / "masks/round_01.pt").exists()


def test_a_rewind_point_beyond_training_is_a_config_error(tmp_path, data_root):
    with pytest.raises(ConfigError, match="method.rewind_to=2 is not accepted: expected fewer than the 2 epochs"):
        run(tmp_path, data_root, "method.rewind_to=2")


def test_the_iteration_rewind_point_is_the_state_after_exactly_k_steps(tmp_path, data_root):
    from lth_runner.session import RunContext
    from lth_runner.training import Stage, Trainer

    overrides = ["method.rewind_to=5", "method.rewind_unit=iteration", "sparsity.rounds=1"]
    run(tmp_path / "run", data_root, *overrides)
    rewind = torch.load(tmp_path / "run/checkpoints/rewind.pt", weights_only=False)

    class StopAfter:
        def after_step(self, trainer):
            if trainer.step == 5:
                raise StopIteration

    cfg = build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))
    replay = RunContext(cfg, tmp_path / "replay")
    model = replay.new_model("init")
    trainer = Trainer(model, replay.data, optim=cfg.optim, trainer=cfg.trainer, seed=cfg.seed)
    with pytest.raises(StopIteration):
        trainer.fit(Stage("round00/dense", 0, "dense", epochs=2), [StopAfter()])
    assert rewind["step"] == 5
    for key, value in model.state_dict().items():
        assert torch.equal(value, rewind["model"][key]), key
