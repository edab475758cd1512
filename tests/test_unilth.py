"""UniLTH / UniDLTH (seed 000, Algorithm 1): laws, penalty, stage-1 stop and rewind, pruning events, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from lth_runner.session import RunContext, run_experiment
from lth_runner.sparse import Mask, kept_count
from lth_runner.sparse.laws import law_fraction, penalty_coefficient
from lth_runner.training import GrowingPenalty, Stage, Trainer
from lth_runner.utils.io import read_jsonl
from tests.conftest import run_cli, without_timings

# Small MNIST-1D runs: 10 batches per epoch; 300 training examples overfit fast, so validation loss turns early.
BASE = [
    "model=mlp",
    "dataset=mnist1d",
    "dataset.num_samples=1000",
    "dataset.train_subset=300",
    "model.hidden=[32,32]",
    "trainer.batch_size=30",
    "trainer.epochs=16",
    "optim.lr=0.05",
    "sparsity=80",
    "sparsity.rounds=4",
    "logger.console=none",
    "logger.plots=false",
]
PRUNABLE = 40 * 32 + 32 * 32 + 32 * 10


def config(data_root, *overrides):
    return build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))


@pytest.fixture(scope="module")
def unilth_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("unilth")
    return run_experiment(config(data_root, "method=unilth"), out).to_dict(), out


@pytest.fixture(scope="module")
def unidlth_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("unidlth")
    return run_experiment(config(data_root, "method=unidlth", "regularizer=explaw"), out).to_dict(), out


def test_the_four_laws_hand_computed():
    for law in ("linear", "loglaw", "explaw", "tanlaw"):
        assert law_fraction(law, 0.0) == pytest.approx(0.0, abs=1e-12) and law_fraction(law, 1.0) == pytest.approx(1.0)
    assert law_fraction("linear", 0.5) == 0.5
    assert law_fraction("loglaw", 0.5) == pytest.approx(math.log(1.5) / math.log(2))  # 0.5850
    assert law_fraction("explaw", 0.5) == pytest.approx((math.exp(0.5) - 1) / (math.e - 1))  # 0.3775
    assert law_fraction("tanlaw", 0.5) == pytest.approx(0.5)
    assert law_fraction("tanlaw", 0.25) == pytest.approx(0.5 * (1 - math.tan(math.pi / 8)))  # 0.2929
    # ordering of Fig. 2 at the middle of the stage: LogLaw > linear = TanLaw > ExpLaw
    assert law_fraction("loglaw", 0.5) > 0.5 > law_fraction("explaw", 0.5)
    assert penalty_coefficient("explaw", 100, 200, 1e-2) == pytest.approx(1e-2 * 0.377541, rel=1e-5)
    assert penalty_coefficient("linear", 300, 200, 1e-3) == 1e-3  # held at the ceiling after E
    assert penalty_coefficient("none", 50, 200, 1e-3) == 0.0


def test_penalty_gradient_is_twice_alpha_w_on_the_selected_set():
    layer = nn.Linear(3, 2, bias=False)
    params = {"w": layer.weight}
    selection = Mask({"w": torch.tensor([[True, False, True], [False, False, True]])})
    penalty = GrowingPenalty(
        params, law="linear", ceiling=0.5, epochs=4, start_step=10, steps_per_epoch=5, selection=selection
    )
    layer.weight.grad = torch.zeros_like(layer.weight)
    trainer = type("T", (), {"step": 20})()  # 2 epochs into a 4-epoch stage: alpha = 0.5 * 2/4
    penalty.before_step(trainer)
    expected = 2 * 0.25 * layer.weight.detach() * selection["w"]
    assert torch.equal(layer.weight.grad, expected)
    assert penalty.log_fields(trainer) == {"penalty": 0.25}


def test_stage_one_stops_by_patience_and_rewinds_exactly_xi_epochs(unilth_run, data_root, tmp_path):
    summary, out = unilth_run
    stage1 = summary["details"]["stage1"]
    assert stage1["stopped_by"] == "patience" and stage1["stop_epoch"] < 16
    assert stage1["rewind_epoch"] == stage1["stop_epoch"] - 2 and stage1["rewind_step"] == 10 * stage1["rewind_epoch"]
    losses = [
        r["val_loss"]
        for r in read_jsonl(out / "metrics.jsonl")
        if r.get("key") == "stage1/dense" and r["event"] == "epoch"
    ]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) == stage1["stop_epoch"] == best + 1 + 2  # two epochs without improvement after the best
    # an independent replay of stage 1 for stop - xi epochs ends in exactly the rewound state
    replay = RunContext(config(data_root, "method=unilth"), tmp_path)
    model = replay.new_model("init")
    Trainer(model, replay.data, optim=replay.cfg.optim, trainer=replay.cfg.trainer, seed=0).fit(
        Stage("stage1/dense", 0, "dense", epochs=stage1["rewind_epoch"], schedule_epochs=16, weight_decay=0.0)
    )
    rewind = torch.load(out / "checkpoints/rewind.pt", weights_only=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, rewind["model"][key]), key


def test_unilth_prunes_at_the_algorithm_steps_to_exact_counts(unilth_run):
    summary, out = unilth_run
    stage1, events = summary["details"]["stage1"], summary["details"]["stage2"]["events"]
    start, steps = stage1["rewind_step"], summary["details"]["stage2"]["epochs"] * 10
    assert [e["step"] for e in events] == [start + math.floor(g * steps / 4 + 0.5) for g in (1, 2, 3, 4)]
    assert [e["kept"] for e in events] == [kept_count(PRUNABLE, 0.2 ** (g / 4)) for g in (1, 2, 3, 4)]
    assert summary["final"]["kept"] == kept_count(PRUNABLE, 0.2) == Mask.load(out / "masks/round_04.pt").num_kept()
    masks = [Mask.load(out / f"masks/round_{g:02d}.pt") for g in (1, 2, 3, 4)]
    for earlier, later in zip(masks, masks[1:]):
        assert all(not (later[n] & ~earlier[n]).any() for n in later)
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "epoch" and r["key"] == "stage2/prune"]
    penalties = [r["penalty"] for r in epochs]
    assert penalties == sorted(penalties) and penalties[-1] == pytest.approx(1e-3)  # linear up to UniLTH's R_ceil
    # only the epoch after the last event is eligible for "best validation" in stage 2
    assert [r["selectable"] for r in epochs] == [False] * (len(epochs) - 1) + [True]
    # by default the final mask is then trained without penalty for half of trainer.epochs (DLTH's share), and the
    # delivered network is that fine-tune's best-validation epoch
    tuned = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "epoch" and r["key"] == "stage3/finetune"]
    assert len(tuned) == 8 and all("penalty" not in r for r in tuned)
    assert {round(r["density"] * PRUNABLE) for r in tuned} == {kept_count(PRUNABLE, 0.2)}
    best = max(tuned, key=lambda r: r["val_acc"])
    assert (summary["final"]["key"], summary["final"]["best_epoch"]) == ("stage3/finetune", best["epoch"])
    assert (
        summary["final"]["test_acc"] == best["test_acc"] and summary["final"]["final_test_acc"] == tuned[-1]["test_acc"]
    )
    assert summary["cost"]["ticket_found_epoch"] == stage1["stop_epoch"]


def test_the_literal_reading_stops_at_the_last_event_and_before_end_trains_a_final_interval(tmp_path, data_root):
    literal = run_experiment(config(data_root, "method=unilth", "method.finetune_epochs=0"), tmp_path / "a")
    assert literal.final.key == "stage2/prune" and "stage3/finetune" not in literal.stages
    rounds = run_experiment(
        config(data_root, "method=unilth", "method.finetune_epochs=0", "method.last_event=before_end"), tmp_path / "b"
    )
    stage1, stage2 = rounds.details["stage1"], rounds.details["stage2"]
    start, steps = stage1["rewind_step"], stage2["epochs"] * 10
    assert [e["step"] for e in stage2["events"]] == [start + math.floor(g * steps / 5 + 0.5) for g in (1, 2, 3, 4)]
    records = [
        r for r in read_jsonl(tmp_path / "b/metrics.jsonl") if r["event"] == "epoch" and r["key"] == "stage2/prune"
    ]
    last_event = stage2["events"][-1]["step"]
    assert [r["selectable"] for r in records] == [r["step"] >= last_event for r in records]
    assert sum(r["selectable"] for r in records) >= 2  # the final interval: E/(psi+1) epochs at the final mask


def test_unidlth_prunes_only_inside_the_random_set_and_empties_it(unidlth_run):
    summary, out = unidlth_run
    unimportant = Mask.load(out / "masks/unimportant.pt")
    assert {n: int(u.sum()) for n, u in unimportant.items()} == {
        n: size - kept_count(size, 0.2)
        for n, size in {"fc1.weight": 1280, "fc2.weight": 1024, "fc3.weight": 320}.items()
    }
    for g in (1, 2, 3, 4):
        mask = Mask.load(out / f"masks/round_{g:02d}.pt")
        assert all(mask[n][~unimportant[n]].all() for n in mask)  # nothing outside U is ever pruned
    final = Mask.load(out / "masks/round_04.pt")
    assert all(not final[n][unimportant[n]].any() for n in final)  # the last event empties U
    assert summary["final"]["kept"] == PRUNABLE - summary["details"]["stage2"]["unimportant"]
    assert summary["details"]["stage2"]["law"] == "explaw" and summary["details"]["stage2"]["ceiling"] == 1e-2
    other = Mask.load(out / "masks/unimportant.pt")
    assert other == unimportant


def test_reset_mode_restarts_every_round_from_the_rewind_point(tmp_path, data_root):
    summary = run_experiment(
        config(data_root, "method=unilth", "method.reset_after_prune=true", "method.stage2_epochs=4"), tmp_path
    ).to_dict()
    rewind_epoch = summary["details"]["stage1"]["rewind_epoch"]
    starts = [
        r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["event"] == "stage_start" and r["phase"] == "ticket"
    ]
    assert [r["start_epoch"] for r in starts] == [rewind_epoch] * 4
    assert [round(r["density"] * PRUNABLE) for r in starts] == [
        kept_count(PRUNABLE, 0.2 ** (g / 4)) for g in (1, 2, 3, 4)
    ]
    assert summary["final"]["kept"] == kept_count(PRUNABLE, 0.2) and summary["details"]["stage2"]["mode"] == "reset"


def test_stage_two_needs_steps_for_every_event(tmp_path, data_root):
    with pytest.raises(ConfigError, match="sparsity.rounds"):
        run_experiment(config(data_root, "method=unilth", "method.stage2_epochs=1", "sparsity.rounds=11"), tmp_path)


def test_unilth_killed_in_stage_two_resumes_to_the_same_summary(tmp_path, data_root):
    overrides = [*BASE, "method=unilth", "trainer.num_threads=1", "logger.console=plain"]
    reference = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'reference'}", data_root=data_root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    stage1 = json.loads((tmp_path / "reference/summary.json").read_text())["details"]["stage1"]
    kill_step = stage1["rewind_step"] + 15  # one and a half epochs into stage 2, after the first checkpoint
    killed = run_cli(
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        "plugins=[tests.fault_injection]",
        data_root=data_root,
        env={"LTH_KILL_AT": f"stage2/prune:{kill_step}"},
    )
    assert killed.returncode == -9
    resumed = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("reference", "run"))
    assert without_timings(first) == without_timings(second)
    for g in (1, 2, 3, 4):
        assert Mask.load(tmp_path / f"run/masks/round_{g:02d}.pt") == Mask.load(
            tmp_path / f"reference/masks/round_{g:02d}.pt"
        )


@pytest.mark.parametrize("method", ["unilth", "unidlth"])
def test_a_reset_run_stopped_before_its_fine_tune_resumes_from_the_last_rounds_weights(
    tmp_path, data_root, monkeypatch, method
):
    """The fine-tune after the last reset round continues from that round's trained weights; a run stopped at the
    boundary (a signal between stages) must find them on disk, not fine-tune from the rewind point."""
    overrides = ["method.reset_after_prune=true", "method.stage2_epochs=8", "method.finetune_epochs=2"]
    reference = run_experiment(config(data_root, f"method={method}", *overrides), tmp_path / "reference")

    class Stopped(Exception):
        pass

    train = RunContext.train

    def stop_before_fine_tune(self, stage, *args, **kwargs):
        if stage.key == "stage3/finetune":
            raise Stopped
        return train(self, stage, *args, **kwargs)

    monkeypatch.setattr(RunContext, "train", stop_before_fine_tune)
    with pytest.raises(Stopped):
        run_experiment(config(data_root, f"method={method}", *overrides), tmp_path / "run")
    monkeypatch.setattr(RunContext, "train", train)
    resumed = run_experiment(config(data_root, f"method={method}", *overrides), tmp_path / "run")
    assert without_timings(resumed.to_dict()) == without_timings(reference.to_dict())
    assert not list((tmp_path / "run" / "checkpoints").glob("round04_ticket.final.pt"))  # released after use


def test_reset_rounds_split_stage_two_exactly_and_the_penalty_never_jumps(tmp_path, data_root):
    """E = 13 epochs over psi = 5 rounds: 3, 2, 3, 2, 3 epochs (the rounds end after round(gamma * 13 / 5) epochs),
    and the penalty of every epoch is the law at the epochs of stage 2 trained so far, across rounds (the bug this
    guards against trained round(E/psi) = 3 epochs per round, 15 in all, while the penalty advanced by 2.6)."""
    from lth_runner.methods.unilth import round_boundaries

    assert round_boundaries(13, 5) == [0, 3, 5, 8, 10, 13]
    summary = run_experiment(
        config(
            data_root,
            "method=unilth",
            "method.reset_after_prune=true",
            "method.stage2_epochs=13",
            "sparsity.rounds=5",
            "method.finetune_epochs=0",
        ),
        tmp_path,
    )
    epochs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["event"] == "epoch" and r["phase"] == "ticket"]
    per_round = [sum(r["round"] == g for r in epochs) for g in range(1, 6)]
    assert (
        per_round == [3, 2, 3, 2, 3] and summary.cost.epochs_total == summary.cost.epochs_per_stage["stage1/dense"] + 13
    )
    assert [r["penalty"] for r in epochs] == pytest.approx(
        [penalty_coefficient("linear", phi, 13, 1e-3) for phi in range(1, 14)]
    )
