"""DLTH and DLTH-Iter (random sparse network transformation): the penalty, the random sets, exact counts, resuming."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lth_runner.methods.dlth  # noqa: F401  (registers dlth and dlth_iter)
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from lth_runner.methods.dlth import draw_unimportant, resolve_epochs, transform_penalty
from lth_runner.session import RunContext, run_experiment
from lth_runner.sparse import Mask, geometric_densities, kept_count, round_counts
from lth_runner.training.schedules import learning_rate
from lth_runner.utils.io import read_jsonl
from tests.conftest import REPO, without_timings

BASE = [
    "model=mlp",
    "dataset=mnist1d",
    "dataset.num_samples=1000",
    "logger.console=none",
    "logger.plots=false",
    "model.hidden=[32,32]",
    "trainer.batch_size=64",
]
LAYERS = {"fc1.weight": 40 * 32, "fc2.weight": 32 * 32, "fc3.weight": 32 * 10}
PRUNABLE = sum(LAYERS.values())  # 2624
STEPS_PER_EPOCH = 12  # 1000 generated, 800 train, 720 after the 10% validation split, batches of 64


def config(data_root, *overrides):
    return build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))


def run(tmp_path, data_root, *overrides):
    return run_experiment(config(data_root, *overrides), tmp_path).to_dict(), tmp_path


def epochs_of(out, key):
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "epoch" and r["key"] == key]


# ------------------------------------------------------------------------------------------------ the penalty
@pytest.mark.parametrize(
    ("overrides", "scale", "ceiling"),
    [([], 2.0, 2e-3), (["regularizer.gradient_scale=1.0", "regularizer.ceiling=1.0"], 1.0, 1.0)],
)
def test_the_penalty_gradient_is_scale_alpha_w_on_the_random_set_only(tmp_path, overrides, scale, ceiling):
    cfg = build_run_config(compose_config(["method=dlth", "logger.console=none", *overrides]))
    assert cfg.regularizer.name == "linear"  # the method's default law
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    params = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    kept = {"0.weight": 9, "2.weight": 4}  # U: 21 of 30 and 16 of 20 weights
    unimportant = draw_unimportant(RunContext(cfg, tmp_path), Mask.ones_like(params), kept, 1)
    assert {n: int(u.sum()) for n, u in unimportant.items()} == {"0.weight": 21, "2.weight": 16}

    penalty = transform_penalty(cfg.regularizer, params, unimportant, grow_epochs=4, steps_per_epoch=10)
    # step 15 = 1.5 epochs of 4 rising: alpha = ceiling * 1.5 / 4; from step 40 on it stays at the ceiling
    for step, alpha in [(15, ceiling * 0.375), (40, ceiling), (55, ceiling)]:
        assert penalty.coefficient(step) == pytest.approx(alpha, rel=1e-12)
        for p in params.values():
            p.grad = torch.zeros_like(p)
        penalty.before_step(SimpleNamespace(step=step))
        for name, p in params.items():
            inside = unimportant[name]
            expected = scale * alpha * p.detach()
            assert torch.allclose(p.grad[inside], expected[inside], rtol=1e-6, atol=0)
            assert (p.grad[inside] != 0).all()
            assert torch.equal(p.grad[~inside], torch.zeros_like(p.grad[~inside]))
    assert penalty.coefficient(0) == 0.0


def test_phase_epochs_default_to_30_and_20_percent_and_the_rest():
    cfg = build_run_config(compose_config(["method=dlth", "logger.console=none", "trainer.epochs=10"]))
    epochs = resolve_epochs(cfg.method, 10)
    assert (epochs.grow, epochs.stabilize, epochs.finetune) == (3, 2, 5)
    epochs = resolve_epochs(cfg.method, 5)  # 1.5 -> 2 and 1.0 -> 1 (half up)
    assert (epochs.grow, epochs.stabilize, epochs.finetune) == (2, 1, 2)
    cfg = build_run_config(compose_config(["method=dlth", "logger.console=none", "method.grow_epochs=9"]))
    with pytest.raises(ConfigError, match="method.finetune_epochs=None is not accepted"):
        resolve_epochs(cfg.method, 10)


# ------------------------------------------------------------------------------------------------ DLTH
def test_dlth_grows_the_penalty_on_a_random_set_then_removes_exactly_that_set(tmp_path, data_root):
    # trainer.epochs=5: grow 2, stabilize 1, fine-tune 2 (the defaults)
    summary, out = run(tmp_path / "run", data_root, "method=dlth", "sparsity=80", "trainer.epochs=5")
    transform = epochs_of(out, "transform/dense")
    assert [r["penalty"] for r in transform] == pytest.approx([1e-3, 2e-3, 2e-3], rel=1e-12)  # linear, then held
    assert all(a <= b for a, b in zip([r["penalty"] for r in transform], [r["penalty"] for r in transform][1:]))
    finetune = epochs_of(out, "finetune/ticket")
    assert len(finetune) == 2 and all("penalty" not in r for r in finetune)
    assert all(r["density"] == 1.0 for r in transform)

    unimportant = Mask.load(out / "masks/dlth_unimportant.pt")
    mask = Mask.load(out / "masks/round_01.pt")
    # per layer, exactly n - kept_count(n, 0.2) weights are removed: the same fraction in every layer
    assert unimportant.layer_kept() == {n: size - kept_count(size, 0.2) for n, size in LAYERS.items()}
    assert mask.layer_kept() == {"fc1.weight": 256, "fc2.weight": 205, "fc3.weight": 64}
    for name in LAYERS:
        assert torch.equal(mask[name], ~unimportant[name])  # nothing outside U is pruned, all of U is
    first_half = int(unimportant["fc1.weight"].reshape(-1)[:640].sum())
    assert abs(first_half - 512) < 40  # spread over the layer (1024 of 1280 chosen), not a block

    assert summary["status"] == "complete"
    final = summary["final"]
    assert final["kept"] == 525 == kept_count(PRUNABLE, 0.2) and final["density"] == 525 / PRUNABLE
    assert final["test_acc"] == max(finetune, key=lambda r: r["val_acc"])["test_acc"]
    assert final["final_test_acc"] == finetune[-1]["test_acc"]
    section = summary["details"]["dlth"]
    assert (section["ceiling"], section["law"], section["gradient_scale"]) == (2e-3, "linear", 2.0)
    assert (section["grow_epochs"], section["stabilize_epochs"], section["finetune_epochs"]) == (2, 1, 2)
    assert summary["cost"]["epochs_per_stage"] == {"transform/dense": 3, "finetune/ticket": 2}
    assert [r["density"] for r in summary["rounds"]] == [1.0, 525 / PRUNABLE]

    # the set is a function of the run seed alone: the same seed draws it again, another seed draws another
    for seed, same in [(0, True), (1, False)]:
        ctx = RunContext(config(data_root, "method=dlth", f"seed={seed}"), tmp_path / f"seed{seed}")
        params = ctx.prunable(ctx.new_model("init"))
        kept = {n: kept_count(size, 0.2) for n, size in LAYERS.items()}
        drawn = draw_unimportant(ctx, Mask.ones_like(params), kept, 1)
        assert (drawn == unimportant) is same
        assert drawn.layer_kept() == unimportant.layer_kept()


def test_dlth_fine_tune_can_continue_the_transform_schedule(tmp_path, data_root):
    summary, out = run(
        tmp_path,
        data_root,
        "method=dlth",
        "trainer.epochs=4",
        "method.grow_epochs=1",
        "method.stabilize_epochs=1",
        "method.finetune_epochs=2",
        "method.finetune_restart=false",
        "optim.scheduler.name=cosine",
    )
    cfg = config(data_root, "method=dlth", "optim.scheduler.name=cosine")
    records = epochs_of(out, "transform/dense") + epochs_of(out, "finetune/ticket")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for record in records:  # one cosine over 4 epochs; the logged rate is the one of the epoch's last step
        expected = learning_rate((record["epoch"] * STEPS_PER_EPOCH - 1) / STEPS_PER_EPOCH, 4, 0.1, cfg.optim.scheduler)
        assert record["lr"] == pytest.approx(expected, rel=1e-12)
    assert summary["cost"]["epochs_per_stage"] == {"transform/dense": 2, "finetune/ticket": 2}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]  # optimizer hand-over removed


def test_dlth_without_fine_tuning_evaluates_the_pruned_network_once(tmp_path, data_root):
    overrides = ["method=dlth", "method.grow_epochs=1", "method.stabilize_epochs=1", "method.finetune_epochs=0"]
    overrides.append("sparsity=50")
    summary, out = run(tmp_path, data_root, *overrides)
    final = summary["final"]
    assert final["kept"] == sum(kept_count(n, 0.5) for n in LAYERS.values()) == PRUNABLE // 2
    assert final["epochs_trained"] == 0 and final["test_acc"] is not None
    assert summary["cost"]["epochs_per_stage"] == {"transform/dense": 2}
    again, _ = run(tmp_path, data_root, *overrides)  # re-running the finished directory reads everything back
    assert again["final"] == final


# ------------------------------------------------------------------------------------------------ DLTH-Iter
def test_dlth_iter_cycles_remove_nested_random_sets_at_the_geometric_rate(tmp_path, data_root):
    # trainer.epochs=2: per cycle 1 epoch rising, 0 held, 1 fine-tuning
    summary, out = run(tmp_path, data_root, "method=dlth_iter", "sparsity=80", "sparsity.rounds=3", "trainer.epochs=2")
    p_e = 1 - 0.2 ** (1 / 3)
    assert summary["details"]["dlth"]["per_cycle_rate"] == pytest.approx(p_e)
    counts = {n: round_counts(size, geometric_densities(0.8, 3)) for n, size in LAYERS.items()}
    alive = Mask.ones_like({n: torch.zeros(size) for n, size in LAYERS.items()})
    for cycle in (1, 2, 3):
        unimportant = Mask.load(out / f"masks/dlth_unimportant_{cycle:02d}.pt")
        mask = Mask.load(out / f"masks/round_{cycle:02d}.pt")
        for name in LAYERS:
            flat_u, flat_alive = unimportant[name].reshape(-1), alive[name]
            assert not (flat_u & ~flat_alive).any()  # drawn among the survivors only
            assert torch.equal(mask[name].reshape(-1), flat_alive & ~flat_u)  # nested: never regrows
        assert mask.layer_kept() == {n: c[cycle - 1] for n, c in counts.items()}
        pruned = 1 - mask.num_kept() / PRUNABLE
        assert abs(pruned - (1 - (1 - p_e) ** cycle)) <= 1.5 / PRUNABLE  # per-layer rounding only
        assert summary["details"]["dlth"]["per_cycle"][cycle - 1]["pruned_fraction"] == pytest.approx(pruned)
        penalties = [r["penalty"] for r in epochs_of(out, f"cycle{cycle:02d}/transform")]
        assert penalties == pytest.approx([2e-3])  # each cycle's penalty rises anew over its grow epoch
        alive = Mask({n: m.reshape(-1) for n, m in mask.items()})
    assert [round(1 - (1 - p_e) ** c, 4) for c in (1, 2, 3)] == [0.4152, 0.658, 0.8]
    assert summary["final"]["kept"] == 525 and summary["final"]["density"] == 525 / PRUNABLE
    assert summary["cost"]["epochs_total"] == 6 and summary["cost"]["stages"] == 6
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]


def test_dlth_iter_takes_its_cycles_from_any_round_schedule(tmp_path, data_root):
    """fixed_fraction: remove 60% of the survivors per cycle down to 80% sparsity: 40%, 20% (the last cut short)."""
    summary, out = run(tmp_path, data_root, "method=dlth_iter", "sparsity.schedule=fixed_fraction", "sparsity.rate=0.6")
    cycles = summary["details"]["dlth"]["per_cycle"]
    per_layer = [sum(kept_count(n, d) for n in LAYERS.values()) for d in (0.4, 0.2)]  # exact per-layer counts
    assert [c["kept"] for c in cycles] == per_layer == [per_layer[0], summary["final"]["kept"]]


# ------------------------------------------------------------------------------------------------ resuming
@pytest.mark.parametrize(
    ("method", "kill_at", "masks"),
    [
        ("dlth", "transform/dense:20", ["dlth_unimportant", "round_01"]),
        ("dlth_iter", "cycle02/transform:20", ["dlth_unimportant_01", "round_01", "dlth_unimportant_02", "round_02"]),
    ],
)
def test_a_run_killed_mid_transform_resumes_to_the_same_summary(tmp_path, data_root, method, kill_at, masks):
    """SIGKILL (a preemption) in a subprocess; the reference and the resumed run in-process, all on one thread."""
    extra = [f"method={method}", "sparsity.rounds=2", "trainer.epochs=4", "method.grow_epochs=2"]
    extra += ["method.stabilize_epochs=1", "method.finetune_epochs=1", "trainer.num_threads=1"]
    run_dir = tmp_path / "run"
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root), PYTHONUNBUFFERED="1", LTH_KILL_AT=kill_at)
    command = [sys.executable, "-m", "lth_runner.train", *BASE, *extra, f"hydra.run.dir={run_dir}"]
    command.append("plugins=[lth_runner.methods.dlth,tests.fault_injection]")
    killed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # step 20: mid-way through epoch 2
    if (run_dir / "summary.json").exists():
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    threads = torch.get_num_threads()
    try:
        reference, _ = run(tmp_path / "reference", data_root, *extra)
        resumed, _ = run(run_dir, data_root, *extra)
    finally:
        torch.set_num_threads(threads)
    assert resumed["status"] == "complete"
    assert without_timings(resumed) == without_timings(reference)
    assert json.loads((run_dir / "summary.json").read_text())["final"] == resumed["final"]
    for name in masks:
        assert Mask.load(run_dir / f"masks/{name}.pt") == Mask.load(tmp_path / f"reference/masks/{name}.pt")
    key = kill_at.partition(":")[0]
    starts = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["event"] == "stage_start" and r["key"] == key]
    assert [r["resumed"] for r in starts] == [False, True] and starts[1]["start_epoch"] == 1
    assert math.isclose(resumed["final"]["density"], resumed["rounds"][-1]["density"])


def test_a_directory_holding_only_a_saved_mask_refuses_a_different_configuration(tmp_path, data_root, monkeypatch):
    """DLTH saves its random set U before its first checkpoint; a re-run with another sparsity must not reuse it."""
    from lth_runner.errors import UserError

    class Stopped(Exception):
        pass

    def stop(self, stage, *args, **kwargs):
        raise Stopped

    monkeypatch.setattr(RunContext, "train", stop)
    with pytest.raises(Stopped):
        run_experiment(config(data_root, "method=dlth", "sparsity=90", "trainer.epochs=4"), tmp_path)
    assert (tmp_path / "masks" / "dlth_unimportant.pt").exists() and not (tmp_path / "checkpoints").exists()
    monkeypatch.undo()
    with pytest.raises(UserError, match="different configuration"):
        run_experiment(config(data_root, "method=dlth", "sparsity=50", "trainer.epochs=4"), tmp_path)


def test_dlth_iter_continuing_schedule_anneals_cycles_without_a_fine_tune_over_their_own_length(tmp_path, data_root):
    """finetune_restart=false carries a cycle's schedule into its fine-tune; a cycle that has none (the reference
    DLTH-Iter recipe between cycles) must anneal over its transform alone and leave no optimizer file behind."""
    run_experiment(
        config(
            data_root,
            "method=dlth_iter",
            "sparsity.rounds=2",
            "trainer.epochs=10",
            "method.finetune_restart=false",
            "method.finetune_between_cycles=false",
            "optim.scheduler.name=cosine",
        ),
        tmp_path,
    )
    lr = {}
    for r in read_jsonl(tmp_path / "metrics.jsonl"):
        if r["event"] == "epoch":
            lr.setdefault(r["key"], []).append(r["lr"])
    assert lr["cycle01/transform"][-1] < 1e-3  # measured 7e-05; sized for transform + fine-tune it ended at 0.051
    assert lr["cycle02/transform"][-1] > 0.04 and lr["cycle02/finetune"][-1] < 1e-3  # one schedule over both
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]
