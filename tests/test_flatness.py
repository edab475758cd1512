"""Penalties on the unpruned weights and the flatness optimizers restricted to the mask (paper 002, Sakamoto & Sato:
Eq. 1, Sec. 3.2-3.3): trainer.penalty (l2_init, l2_norm), trainer.sam, trainer.nvrm."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_runner.config.schema import NVRMConfig, SAMConfig, TrainerConfig, WeightPenaltyConfig
from lth_runner.sparse import Mask, MaskEnforcer, prunable_parameters
from lth_runner.training import NVRM, SAM, Stage, WeightPenalty, flatness_hooks, hooks_with
from lth_runner.utils.io import read_jsonl
from tests.conftest import TINY_MNIST1D, assert_killed_run_resumes_identically, run_cli
from tests.test_training import SignalAt, make_trainer

BASE = [
    *TINY_MNIST1D,
    "sparsity.rounds=2",
    "trainer.num_threads=1",
    "logger.console=plain",
    "logger.plots=false",
]


def stage_hooks(cfg: TrainerConfig, model: nn.Module, enforcer: MaskEnforcer, extra=()) -> list:
    """The hook list RunContext.train builds: flatness hooks around mask enforcement and the method's own."""
    before, after = flatness_hooks(cfg, model, enforcer.params, enforcer, seed=3)
    return [*before, *hooks_with(enforcer, extra), *after]


def masked_layer():
    """A 2 x 3 weight with two pruned entries, and a dense 2 x 2 one (the enforcer keeps no factor for it)."""
    w = nn.Parameter(torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]]))
    v = nn.Parameter(torch.tensor([[2.0, -1.0], [0.0, 1.0]]))
    mask = Mask({"w": torch.tensor([[True, False, True], [True, True, False]]), "v": torch.ones(2, 2, dtype=bool)})
    return w, v, MaskEnforcer({"w": w, "v": v}, mask)


# ------------------------------------------------------------------------------------------------ penalties
def test_l2_init_and_l2_norm_gradients_by_hand_are_zero_on_pruned_entries():
    w, v, enforcer = masked_layer()
    penalty = WeightPenalty(enforcer.params, kind="l2_init", coefficient=0.25, enforcer=enforcer)
    enforcer.apply_to_weights()  # as EnforceMask.on_stage_start: w = [[1, 0, 3], [0.5, 4, 0]]
    penalty.on_stage_start(None)
    with torch.no_grad():  # training moved the weights: + 1 on w's kept entries, v = [[3, -1], [0, 3]]
        w.add_(torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
        v.add_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    w.grad, v.grad = torch.zeros(2, 3), torch.full((2, 2), 0.5)
    penalty.before_step(None)
    # 2 * 0.25 * m * (theta - theta_init): 0.5 where w moved by 1, 0 on the pruned entries; v: 0.5 + 0.5 * delta
    assert torch.equal(w.grad, torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]))
    assert torch.equal(v.grad, torch.tensor([[1.0, 0.5], [0.5, 1.5]]))
    assert penalty.value() == pytest.approx(0.25 * (4 * 1.0 + 1.0 + 4.0))

    norm = WeightPenalty(enforcer.params, kind="l2_norm", coefficient=0.25, enforcer=enforcer)
    with torch.no_grad():
        w[0, 1] = 7.0  # a pruned entry that is not zero (between a prune and its re-mask): m keeps it out
    w.grad, v.grad = torch.zeros(2, 3), torch.zeros(2, 2)
    norm.before_step(None)
    assert torch.equal(w.grad, 0.5 * torch.tensor([[2.0, 0.0, 4.0], [1.5, 5.0, 0.0]]))
    assert torch.equal(v.grad, 0.5 * v.detach())
    assert norm.value() == pytest.approx(0.25 * (4 + 16 + 2.25 + 25 + 9 + 1 + 9))


def test_penalty_on_sparse_stages_only_skips_a_dense_network_and_resumes_its_reference():
    w, v, _ = masked_layer()
    dense = MaskEnforcer({"w": w, "v": v}, Mask.ones_like({"w": w, "v": v}))
    skipped = WeightPenalty(dense.params, kind="l2_norm", coefficient=1.0, enforcer=dense, stages="sparse")
    w.grad = torch.zeros(2, 3)
    skipped.before_step(None)
    assert torch.equal(w.grad, torch.zeros(2, 3))
    started = WeightPenalty(dense.params, kind="l2_init", coefficient=1.0)
    started.on_stage_start(None)
    resumed = WeightPenalty(dense.params, kind="l2_init", coefficient=1.0)
    resumed.load_state_dict(started.state_dict())
    with torch.no_grad():
        w.add_(1.0)
    assert resumed.value() == pytest.approx(6.0) == started.value()


# ------------------------------------------------------------------------------------------------------ SAM
def sam_trainer(batch_norm: bool):
    trainer, enforcer = make_trainer(None)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16) if batch_norm else nn.Identity(),
                          nn.ReLU(), nn.Linear(16, trainer.data.spec.num_classes))  # fmt: skip
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    params = prunable_parameters(model)
    mask = Mask.random({n: p.shape for n, p in params.items()}, 0.5, generator=torch.Generator().manual_seed(0))
    enforcer = MaskEnforcer(params, mask)
    enforcer.apply_to_weights()
    trainer.model = trainer.forward = model
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = next(iter(trainer.data.train_batches(0)))
    trainer.batch = (x, y)
    return trainer, model, enforcer, mask, params


@pytest.mark.parametrize("bn", ["freeze", "update"])
def test_sam_perturbs_only_unpruned_weights_by_rho_and_steps_with_the_gradient_at_theta_plus_e(bn):
    trainer, model, enforcer, mask, params = sam_trainer(batch_norm=True)
    x, y = trainer.batch
    trainer.loss_and_backward(x, y)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    sam = SAM(model, rho=0.05, enforcer=enforcer, update_bn=bn == "update")
    sam.record = True
    sam.before_step(trainer)

    names = {id(p): name for name, p in model.named_parameters()}
    e = {names[id(p)]: t for p, t in sam.perturbation}
    assert set(e) == set(theta)  # biases and BatchNorm's affine are perturbed too
    assert torch.linalg.vector_norm(torch.cat([t.flatten() for t in e.values()])).item() == pytest.approx(0.05)
    by_name = {name: mask[name] for name in params}
    for name, keep in by_name.items():
        assert torch.all(e[name][~keep] == 0) and torch.count_nonzero(e[name][keep]) > 0  # exactly zero if pruned
    g = {name: grads[name] * by_name[name] if name in by_name else grads[name] for name in grads}
    scale = 0.05 / torch.linalg.vector_norm(torch.cat([t.flatten() for t in g.values()]))
    for name in g:
        torch.testing.assert_close(e[name], g[name] * scale, rtol=1e-6, atol=1e-9)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), theta[name]), name  # theta restored bit for bit

    # the gradient at theta + e, by hand, on a copy (its BatchNorm sees the batch once, as the second pass does)
    by_hand = copy.deepcopy(model)
    by_hand.load_state_dict({**model.state_dict(), **stats})
    with torch.no_grad():
        for name, p in by_hand.named_parameters():
            p.add_(g[name] * scale)
    F.cross_entropy(by_hand(x), y).backward()
    for name, p in by_hand.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).grad, p.grad, rtol=1e-5, atol=1e-7)
    batch_norm = model[2]
    if bn == "freeze":  # running statistics as the first pass left them
        assert batch_norm.num_batches_tracked.item() == 1
        assert torch.equal(batch_norm.running_mean, stats["2.running_mean"])
    else:
        assert batch_norm.num_batches_tracked.item() == 2
        assert not torch.equal(batch_norm.running_mean, stats["2.running_mean"])


def test_a_sam_stage_keeps_pruned_weights_at_zero_and_differs_from_plain_sgd():
    stage = Stage("round01/ticket", 1, "ticket", epochs=2)
    results = {}
    for name, cfg in {"sgd": TrainerConfig(), "sam": TrainerConfig(sam=SAMConfig(enabled=True, rho=0.1))}.items():
        trainer, enforcer = make_trainer(None)
        results[name] = trainer.fit(stage, stage_hooks(cfg, trainer.model, enforcer))
        for n, p in enforcer.params.items():
            assert torch.all(p.detach()[~enforcer.mask[n]] == 0), n
    assert results["sam"].final_train_loss != results["sgd"].final_train_loss


# ----------------------------------------------------------------------------------------------------- NVRM
def test_nvrm_noise_has_std_b_on_unpruned_entries_and_none_on_pruned_ones():
    weight = nn.Parameter(torch.randn(300, 200, generator=torch.Generator().manual_seed(0)))
    keep = torch.rand(300, 200, generator=torch.Generator().manual_seed(1)) < 0.4
    enforcer = MaskEnforcer({"w": weight}, Mask({"w": keep}))
    enforcer.apply_to_weights()
    clean = weight.detach().clone()
    nvrm = NVRM([weight], std=0.014, seed=0, enforcer=enforcer)
    trainer = SimpleNamespace(step=3, steps_per_epoch=10, stage=SimpleNamespace(key="round01/ticket", start_step=0))
    nvrm.after_step(trainer)
    drawn = nvrm._noise[0].clone()
    noise = weight.detach() - clean
    torch.testing.assert_close(noise, drawn, rtol=0, atol=1e-6)  # up to the rounding of theta + eps
    assert torch.all(weight.detach()[~keep] == 0)  # pruned weights stay exactly zero
    assert noise[keep].std().item() == pytest.approx(0.014, rel=0.02)  # 24k draws: 1/sqrt(2n) = 0.5% error
    assert abs(noise[keep].mean().item()) < 3 * 0.014 / keep.sum().item() ** 0.5
    nvrm.take_off.after_step(trainer)  # the next step's take-off: back to the clean weights (up to rounding)
    torch.testing.assert_close(weight.detach(), clean, rtol=0, atol=1e-6)
    again = nvrm.draw(trainer)[0]
    assert torch.equal(again, drawn)  # the same step draws the same noise
    trainer.step = 4
    assert not torch.equal(nvrm.draw(trainer)[0], again)
    trainer.step = 10  # the last step of an epoch leaves the weights clean (as vsgd.py)
    assert not NVRM.noisy_at(trainer)


class Probe:
    """After NVRM at ``step``: evaluation sees the clean weights while the noise is on."""

    def __init__(self, nvrm: NVRM, enforcer: MaskEnforcer, step: int) -> None:
        self.nvrm, self.enforcer, self.step, self.seen = nvrm, enforcer, step, {}

    def after_step(self, trainer) -> None:
        for name, p in self.enforcer.params.items():
            assert torch.all(p.detach()[~self.enforcer.mask[name]] == 0), name
        if trainer.step != self.step:
            return
        noisy = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        self.seen["hooked"] = trainer.evaluate("val")  # through the trainer: noise off, evaluate, noise back on
        assert all(torch.equal(v, noisy[k]) for k, v in trainer.model.state_dict().items())
        self.seen["noisy"] = trainer._evaluate("val")  # the noisy network, for contrast
        self.nvrm.clean_weights(trainer)
        self.seen["clean"] = trainer._evaluate("val")
        self.nvrm.restore_weights(trainer)
        assert all(torch.equal(v, noisy[k]) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("noise_on", ["unpruned", "all"])
def test_nvrm_evaluations_see_the_clean_weights_and_pruned_weights_stay_zero(noise_on):
    trainer, enforcer = make_trainer(None)
    cfg = TrainerConfig(nvrm=NVRMConfig(enabled=True, b=0.05, noise_on=noise_on))
    hooks = stage_hooks(cfg, trainer.model, enforcer)
    probe = Probe(hooks[-1], enforcer, step=7)  # 5 steps per epoch: mid-way through the second
    result = trainer.fit(Stage("round01/ticket", 1, "ticket", epochs=2), [*hooks, probe])
    assert probe.seen["hooked"] == probe.seen["clean"] != probe.seen["noisy"]
    assert result.steps == 10 and hooks[-1]._noise is None  # the stage ends on clean weights


def test_a_stage_with_sam_nvrm_and_l2_init_signalled_mid_epoch_resumes_to_identical_weights(tmp_path):
    """The mid-epoch checkpoint holds the clean weights; the resumed stage redraws the noise of that step and
    trains on exactly the noisy weights the uninterrupted one did."""
    from lth_runner import preemption

    cfg = TrainerConfig(
        sam=SAMConfig(enabled=True),
        nvrm=NVRMConfig(enabled=True, b=0.02),
        penalty=WeightPenaltyConfig(name="l2_init", coefficient=1e-2),
    )
    stage = Stage("round01/ticket", 1, "ticket", epochs=4)
    straight, enforcer = make_trainer(tmp_path / "a.pt")
    expected = straight.fit(stage, stage_hooks(cfg, straight.model, enforcer))
    interrupted, enforcer = make_trainer(tmp_path / "b.pt")
    hooks = stage_hooks(cfg, interrupted.model, enforcer, [SignalAt(step=12)])
    try:
        with pytest.raises(preemption.Interrupted):
            interrupted.fit(stage, hooks)
    finally:
        preemption._state["signum"] = None
    checkpoint = torch.load(tmp_path / "b.pt", weights_only=False)
    nvrm = hooks[-1]
    assert checkpoint["step"] == 12 and nvrm._noise is not None  # mid-epoch, noise on again after the save
    clean = dict(zip([id(p) for p in nvrm._params], nvrm._clean))
    for name, p in interrupted.model.named_parameters():
        if id(p) in clean:
            assert torch.equal(checkpoint["model"][name], clean[id(p)]), name
            assert not torch.equal(checkpoint["model"][name], p.detach()), name
    resumed, enforcer = make_trainer(tmp_path / "b.pt")
    result = resumed.fit(stage, stage_hooks(cfg, resumed.model, enforcer))
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert result.final_train_loss == expected.final_train_loss


# -------------------------------------------------------------------------------------------------------- CLI
def test_lth_iter_with_sam_end_to_end_and_a_resume_must_keep_it(tmp_path, data_root):
    plain = run_cli(*BASE, f"hydra.run.dir={tmp_path / 'plain'}", data_root=data_root, check=True)
    sam = run_cli(*BASE, "trainer.sam.enabled=true", "trainer.sam.rho=0.1", f"hydra.run.dir={tmp_path / 'sam'}",
                  data_root=data_root, check=True)  # fmt: skip
    assert "final: density 20.0" in sam.stdout and plain.returncode == 0
    first, second = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("plain", "sam"))
    assert [r["density"] for r in first["rounds"]] == [r["density"] for r in second["rounds"]]
    losses = {
        d: [r["train_loss"] for r in read_jsonl(tmp_path / d / "metrics.jsonl") if r["event"] == "epoch"]
        for d in ("plain", "sam")
    }
    assert len(losses["sam"]) == 6 and all(a != b for a, b in zip(losses["plain"], losses["sam"]))
    assert "rho: 0.1" in (tmp_path / "sam" / "config.yaml").read_text()
    changed = run_cli(*BASE, f"hydra.run.dir={tmp_path / 'sam'}", data_root=data_root)
    assert changed.returncode != 0 and "trainer.sam.enabled: True -> False" in changed.stderr


@pytest.mark.slow  # three subprocess runs, a kill and a resume (15-22 s): in the slow suite, which .ci/run runs
def test_a_run_with_sam_nvrm_and_l2_init_killed_mid_epoch_resumes_to_the_same_summary(tmp_path, data_root):
    overrides = [*BASE, "trainer.sam.enabled=true", "trainer.nvrm.enabled=true", "trainer.penalty.name=l2_init"]
    # 12 steps per epoch (720 training examples, batch 64): round 1, mid-way through its second epoch
    assert_killed_run_resumes_identically(tmp_path, overrides, "round01/ticket:17", ["round_01", "round_02"],
                                          data_root)  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.penalty.name=l2", "trainer.penalty.name='l2' is not accepted: expected one of: none, l2_init"),
        ("trainer.sam.rho=0", "trainer.sam.rho=0.0 is not accepted: expected a number > 0.0"),
        ("trainer.nvrm.noise_on=bias", "trainer.nvrm.noise_on='bias' is not accepted: expected one of: unpruned"),
    ],
)
def test_bad_flatness_options_fail_in_one_line(override, message):
    from lth_runner.config.compose import compose_config
    from lth_runner.config.validate import build_run_config
    from lth_runner.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        build_run_config(compose_config([*BASE, override]))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
