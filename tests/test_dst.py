"""Dynamic sparse training (SET, RigL): ERK densities, the update schedule, one drop-and-grow update by hand, the
hook inside the trainer (exact counts, zero-started connections, no extra gradient pass), resume and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lth_runner.training.drop_and_grow as drop_and_grow_module
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, MaskEnforcer, kept_count
from lth_runner.sparse.dst import UpdateSchedule, drop_and_grow, erk_densities, layer_densities, update_count
from lth_runner.training.drop_and_grow import DropAndGrow, _start_at_zero
from lth_runner.training.trainer import EnforceMask, Trainer, hooks_with
from lth_runner.utils.io import read_jsonl
from tests.conftest import TINY_MNIST1D, assert_killed_run_resumes_identically, without_timings

# 1,000 MNIST-1D examples (720 for training), batch 64: 12 steps an epoch, 4 epochs = 48 steps; updates every 5
# steps until T_end = floor(0.75 * 48) = 36: at steps 5, 10, ..., 35 (7 updates).
BASE = [*TINY_MNIST1D, "trainer.epochs=4", "method.delta_t=5", "method.save_every=1", "logger.plots=false"]


def config(data_root, *overrides, method="rigl"):
    return build_run_config(compose_config([*BASE, f"method={method}", f"paths.data_root={data_root}", *overrides]))


@pytest.fixture(scope="module")
def rigl_run(tmp_path_factory, data_root):
    """One uninterrupted RigL run of BASE, shared by the tests that read it (its directory and summary)."""
    out = tmp_path_factory.mktemp("rigl")
    return out, run_experiment(config(data_root), out).to_dict()


# ----------------------------------------------------------------------------------------------- densities
def test_erk_densities_by_hand():
    # LeNet-300-100's first two layers at density 0.1: ratios 1084/235200 and 400/30000, one scale for both
    shapes = {"fc1": (300, 784), "fc2": (100, 300)}
    scale = 0.1 * (235200 + 30000) / (1084 + 400)
    densities = erk_densities(shapes, 0.1)
    assert densities == pytest.approx({"fc1": scale * 1084 / 235200, "fc2": scale * 400 / 30000}, rel=1e-12)
    assert densities["fc1"] == pytest.approx(0.082363, abs=1e-6) and densities["fc2"] == pytest.approx(
        0.238275, abs=1e-6
    )
    assert sum(densities[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(26520)
    # a conv layer counts its kernel: (64 + 3 + 3 + 3) / (64 * 3 * 3 * 3)
    conv = erk_densities({"conv": (64, 3, 3, 3), "fc": (10, 4096)}, 0.2)
    assert conv["conv"] / conv["fc"] == pytest.approx((73 / 1728) / (4106 / 40960))


def test_erk_keeps_a_layer_dense_when_its_share_would_exceed_one():
    # scale 0.5 * 1001000 / 2110 = 237.2 would give the small layer density 26: it goes dense, the big one takes
    # the rest of the budget, (500500 - 1000) / 1e6
    densities = erk_densities({"small": (10, 100), "big": (1000, 1000)}, 0.5)
    assert densities == pytest.approx({"small": 1.0, "big": 0.4995})
    assert layer_densities({"a": (3, 4), "b": (5, 6)}, 0.25, "uniform") == {"a": 0.25, "b": 0.25}
    with pytest.raises(ValueError, match="expected one of"):
        layer_densities({"a": (3, 4)}, 0.25, "balanced")


# ------------------------------------------------------------------------------------------------ schedule
def test_the_update_schedule_follows_rigl_eq_1():
    schedule = UpdateSchedule.for_training(1000, delta_t=100, alpha=0.3, t_end=0.75, decay="cosine")
    assert schedule.end_step == 750 and schedule.num_updates == 7
    assert [t for t in range(1001) if schedule.is_update(t)] == [100, 200, 300, 400, 500, 600, 700]
    # f(t) = alpha/2 (1 + cos(pi t / T_end)): cos(pi 100/750) = 0.913545, cos(pi 700/750) = -0.978148
    assert schedule.fraction(100) == pytest.approx(0.15 * 1.913545, abs=1e-6)
    assert schedule.fraction(700) == pytest.approx(0.15 * 0.021852, abs=1e-6)
    assert schedule.fraction(0) == 0.3 and schedule.fraction(750) == pytest.approx(0.0, abs=1e-15)
    constant = UpdateSchedule.for_training(1000, delta_t=100, alpha=0.3, t_end=0.75, decay="constant")
    assert constant.fraction(700) == 0.3
    assert UpdateSchedule.for_training(1000, delta_t=100, alpha=0.3, t_end=0.0, decay="cosine").num_updates == 0
    # floor(fraction * active), with 0.3 * 10 counted as 3 although it is 2.9999999999999996 in binary
    assert update_count(10, 0.1 * 3) == 3 and update_count(7, 0.29) == 2 and update_count(5, 0.0) == 0


# -------------------------------------------------------------------------------------------------- update
def test_one_update_drops_the_smallest_magnitudes_and_grows_the_top_scores():
    weights = {"w": torch.tensor([0.5, -0.1, 0.3, 0.0, 0.0, 0.0, 0.0, -0.7])}
    mask = Mask({"w": torch.tensor([1, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)})
    scores = {"w": torch.tensor([0.0, 0.0, 0.0, 0.2, 0.9, 0.1, 0.8, 0.0])}
    # 4 active, fraction 0.5: drop 2 (-0.1 and 0.3, the smallest |w|), grow 2 among the rest (0.9 and 0.8)
    new, fresh, counts = drop_and_grow(weights, mask, scores, 0.5)
    assert new["w"].tolist() == [True, False, False, False, True, False, True, True]
    assert fresh["w"].tolist() == [False, False, False, False, True, False, True, False]
    assert (counts["w"].changed, counts["w"].regrown_new) == (2, 2)
    # a just-dropped connection is a candidate: with the top grow score it comes back (and is not new)
    scores = {"w": torch.tensor([0.0, 5.0, 0.0, 0.2, 0.9, 0.1, 0.0, 0.0])}
    new, fresh, counts = drop_and_grow(weights, mask, scores, 0.5)
    assert new["w"].tolist() == [True, True, False, False, True, False, False, True]
    assert (counts["w"].changed, counts["w"].regrown_new) == (2, 1) and int(fresh["w"].sum()) == 1


def test_new_connections_start_without_optimizer_state():
    for optimizer_class, keys in (
        (torch.optim.SGD, ("momentum_buffer",)),
        (torch.optim.Adam, ("exp_avg", "exp_avg_sq")),
    ):
        weight = nn.Parameter(torch.randn(4, 3))
        optimizer = optimizer_class(
            [weight], lr=0.1, **({"momentum": 0.9} if optimizer_class is torch.optim.SGD else {})
        )
        weight.grad = torch.randn(4, 3)
        optimizer.step()
        before = {k: optimizer.state[weight][k].clone() for k in keys}
        grown = torch.zeros(4, 3, dtype=torch.bool)
        grown[1, 2] = grown[3, 0] = True
        _start_at_zero({"w": weight}, {"w": grown}, optimizer)
        assert (weight.detach()[grown] == 0).all() and (weight.detach()[~grown] != 0).all()
        for key in keys:
            assert (optimizer.state[weight][key][grown] == 0).all()
            assert torch.equal(optimizer.state[weight][key][~grown], before[key][~grown])


# --------------------------------------------------------------------------------------- inside the trainer
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_counts_stay_exact_and_follow_the_schedule(tmp_path, data_root, rigl_run, method):
    if method == "rigl":  # ERK densities
        out, summary = rigl_run
    else:  # uniform densities
        out, summary = (
            tmp_path,
            run_experiment(config(data_root, "method.distribution=uniform", method="set"), tmp_path).to_dict(),
        )
    initial = Mask.load(out / "masks/initial.pt")
    counts = {name: int(keep.sum()) for name, keep in initial.items()}
    updates = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "mask_update"]
    assert [u["step"] for u in updates] == [5, 10, 15, 20, 25, 30, 35]
    schedule = UpdateSchedule.for_training(48, delta_t=5, alpha=0.3, t_end=0.75, decay="cosine")
    for record in updates:
        mask = Mask.load(out / f"masks/update_{record['update']:04d}.pt")
        assert {name: int(keep.sum()) for name, keep in mask.items()} == counts  # exact, every layer
        assert record["fraction"] == pytest.approx(schedule.fraction(record["step"]))
        for name, layer in record["layers"].items():
            assert layer["changed"] == math.floor(counts[name] * record["fraction"] + 1e-9)
    assert Mask.load(out / "masks/final.pt") == Mask.load(out / "masks/update_0007.pt")
    assert summary["final"]["kept"] == sum(counts.values()) and summary["details"]["dst"]["updates"] == 7
    assert summary["details"]["dst"]["initial_overlap"] < 0.9  # the topology moved
    assert summary["details"]["dst"]["grow"] == ("gradient" if method == "rigl" else "random")
    densities = initial.layer_densities()
    if method == "rigl":  # ERK gave the layers different densities, the network-wide target overall
        assert len(set(densities.values())) == len(densities) and initial.density() == pytest.approx(0.2, abs=1e-3)
    else:
        assert counts == {name: kept_count(keep.numel(), 0.2) for name, keep in initial.items()}


def test_grown_weights_leave_the_update_step_at_zero_and_no_extra_backward_is_run(tmp_path, data_root, monkeypatch):
    """RigL: the grow scores are the step's dense gradient, read on update steps only; the trainer's one backward
    per step is the only one (no second pass for the dense gradient); an update step takes no weight step, so the
    grown connections are exactly zero after it, momentum included."""
    backward_passes, update_calls, grown_checks = [], [], []
    real_backward, real_update = Trainer.loss_and_backward, drop_and_grow_module.drop_and_grow

    def counting_backward(self, x, y):
        backward_passes.append(self.step)
        return real_backward(self, x, y)

    def spying_update(weights, mask, grow_scores, fraction):
        update_calls.append(grow_scores)
        for name, keep in mask.items():
            assert (grow_scores[name][~keep] > 0).any()  # the dense gradient: pruned entries have one too
        return real_update(weights, mask, grow_scores, fraction)

    class CheckGrown:
        previous: Mask | None = None

        def after_step(self, trainer):
            hook = next(h for h in trainer.hooks if isinstance(h, drop_and_grow_module.DropAndGrow))
            if self.previous is not None and hook.mask != self.previous:
                for name, param in hook.enforcer.params.items():
                    grown = hook.mask[name] & ~self.previous[name]
                    momentum = trainer.optimizer.state[param]["momentum_buffer"]
                    grown_checks.append(bool((param.detach()[grown] == 0).all() and (momentum[grown] == 0).all()))
            self.previous = hook.mask.clone()

    real_fit = Trainer.fit
    monkeypatch.setattr(
        Trainer, "fit", lambda self, stage, hooks=(), **kw: real_fit(self, stage, [*hooks, CheckGrown()], **kw)
    )
    monkeypatch.setattr(Trainer, "loss_and_backward", counting_backward)
    monkeypatch.setattr(drop_and_grow_module, "drop_and_grow", spying_update)
    run_experiment(config(data_root, "optim.momentum=0.9"), tmp_path)
    assert backward_passes == list(range(48))  # one per optimizer step, update steps included
    # the last update (t = 35, f = 0.15 (1 + cos(35 pi / 36)) = 0.00057) changes nothing: 6 changes x 3 layers
    assert len(update_calls) == 7 and len(grown_checks) == 6 * 3 and all(grown_checks)


def test_an_update_can_also_take_the_weight_step_and_masks_are_saved_every_k_updates(tmp_path, data_root, rigl_run):
    reference_dir, reference = rigl_run
    summary = run_experiment(config(data_root, "method.update_replaces_step=false", "method.save_every=3"), tmp_path)
    assert summary.final.kept == reference["final"]["kept"]
    weights = [torch.load(d / "checkpoints/round01_sparse.final.pt") for d in (tmp_path, reference_dir)]
    assert not torch.equal(weights[0]["fc1.weight"], weights[1]["fc1.weight"])  # seven more weight steps
    saved = sorted(p.stem for p in (tmp_path / "masks").glob("update_*.pt"))
    assert saved == ["update_0003", "update_0006", "update_0007"]  # every third and the last


def test_static_sparse_training_is_t_end_zero(tmp_path, data_root):
    summary = run_experiment(config(data_root, "method.t_end=0", "method.distribution=uniform"), tmp_path).to_dict()
    assert Mask.load(tmp_path / "masks/final.pt") == Mask.load(tmp_path / "masks/initial.pt")
    assert summary["details"]["dst"]["updates"] == 0 and summary["details"]["dst"]["initial_overlap"] == 1.0
    densities = Mask.load(tmp_path / "masks/initial.pt").layer_densities()
    assert all(abs(d - 0.2) < 0.01 for d in densities.values())


def test_a_rerun_of_a_finished_run_reads_the_final_mask_back(tmp_path, data_root):
    first = run_experiment(config(data_root, "method.save_every=4"), tmp_path).to_dict()
    (tmp_path / "masks/final.pt").unlink()  # the last update's mask is what the delivered network used
    second = run_experiment(config(data_root, "method.save_every=4"), tmp_path).to_dict()
    assert without_timings(first) == without_timings(second)
    assert Mask.load(tmp_path / "masks/final.pt") == Mask.load(tmp_path / "masks/update_0007.pt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.distribution=balanced"], "method.distribution"),
        (["method.grow=momentum"], "method.grow"),
        (["method.delta_t=0"], "method.delta_t"),
        (["sparsity.target=0"], "sparsity.target"),
    ],
)
def test_bad_options_fail_in_one_line(data_root, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(data_root, *overrides)


# ------------------------------------------------------------------------------------------------ resume, CLI
def test_a_run_that_crashed_between_updates_resumes_to_the_same_result(tmp_path, data_root, monkeypatch, rigl_run):
    """Crashed at step 31 (after 6 updates, 7 steps past the epoch-2 checkpoint) and re-run in its directory: the
    stage resumes from the checkpoint with the hook's mask, counters and explored set, and ends exactly as an
    uninterrupted run (whose masks it also writes)."""
    reference_dir, reference = rigl_run

    class Crash:
        def after_step(self, trainer):
            if trainer.step == 31:
                raise RuntimeError("crash")

    real_fit = Trainer.fit
    with monkeypatch.context() as patch:
        patch.setattr(
            Trainer, "fit", lambda self, stage, hooks=(), **kw: real_fit(self, stage, [*hooks, Crash()], **kw)
        )
        with pytest.raises(RuntimeError, match="crash"):
            run_experiment(config(data_root), tmp_path / "run")
    assert not (tmp_path / "run/masks/update_0007.pt").exists()
    resumed = run_experiment(config(data_root), tmp_path / "run").to_dict()
    assert without_timings(resumed) == without_timings(reference)
    for name in ("initial", "final", "update_0005", "update_0006", "update_0007"):
        assert Mask.load(tmp_path / f"run/masks/{name}.pt") == Mask.load(reference_dir / f"masks/{name}.pt")


@pytest.mark.slow
def test_a_run_killed_between_updates_resumes_to_the_same_result(tmp_path, data_root):
    """SIGKILLed at step 31 (after 6 updates, 7 steps past the epoch-2 checkpoint): resumed from the checkpoint,
    the hook's mask, counters and explored set come back and the run ends exactly as an uninterrupted one."""
    overrides = [*BASE, "method=rigl", "trainer.num_threads=1"]
    masks = ["initial", "final", "update_0005", "update_0007"]
    assert_killed_run_resumes_identically(tmp_path, overrides, "round01/sparse:31", masks, data_root)


def test_the_drop_and_grow_hook_takes_the_place_of_its_enforcers_hook_only():
    weight = nn.Parameter(torch.ones(4))
    enforcer = MaskEnforcer({"w": weight}, Mask({"w": torch.tensor([True, False, True, False])}))
    other = EnforceMask(MaskEnforcer({"w": weight}, Mask({"w": torch.tensor([True, True, True, False])})))
    hook = DropAndGrow(enforcer, grow="random", delta_t=1, alpha=0.3, t_end=0.75, decay="cosine")
    assert hooks_with(enforcer, [other, hook]) == [hook, other]  # first, so it reads the gradient unmasked
    plain = hooks_with(enforcer, [other])  # another mask's hook (EB's BatchNorm channels) adds to the enforcer's
    assert len(plain) == 2 and plain[0].enforcer is enforcer and plain[1] is other
