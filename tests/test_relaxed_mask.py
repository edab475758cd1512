"""Relaxed masks (paper 001's concave regularizers, Continuous Sparsification): penalties and their gradients by
hand, the [0, 1] box, exact counts, the mask optimizer group, the ticket trained on exactly the thresholded mask,
resume mid-run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from lth_runner.methods.relaxed_mask import round_densities
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, kept_count
from lth_runner.sparse.mask_penalties import mask_l1, mask_log, penalty_of
from lth_runner.sparse.relaxed_mask import MaskPenalty, ProjectToUnitBox, RelaxedMaskedModel, TemperatureSchedule
from lth_runner.training.optim import build_optimizer, load_state_keeping_hyperparameters, set_learning_rate
from lth_runner.utils.io import read_jsonl
from tests.conftest import assert_killed_run_resumes_identically

BASE = [
    "model=mlp",
    "dataset=mnist1d",
    "dataset.num_samples=1000",
    "model.hidden=[32,32]",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "sparsity=80",
    "logger.console=none",
    "logger.plots=false",
]
LOG_CFG = SimpleNamespace(eps=0.01, normalize=True)


def config(data_root, *overrides):
    return build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


# ------------------------------------------------------------------------------------------------ penalties
def test_l1_and_log_penalties_and_their_gradients_by_hand():
    """r_l1(m) = m, slope 1. r_log(m) = log(1 + m/0.01) / log(101): r(0) = 0, r(1) = 1, r(0.5) = log(51)/log(101)
    = 3.931826/4.615121 = 0.851944; slope 1/((0.01 + m) log 101): at m = 0.5, 1/(0.51 * 4.61512) = 0.424861; at
    m = 0.01, 1/(0.02 * 4.61512) = 10.83395; at m = 1, 1/(1.01 * 4.615121) = 0.214534 (the 0.21 lambda pull of
    docs/methods.md)."""
    m = torch.tensor([0.0, 0.01, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    assert mask_l1(m, LOG_CFG).tolist() == [0.0, 0.01, 0.5, 1.0]
    cost = mask_log(m, LOG_CFG)
    assert cost.detach().tolist() == pytest.approx([0.0, math.log(2) / math.log(101), 0.851944, 1.0], abs=1e-6)
    (grad,) = torch.autograd.grad(cost.sum(), m)
    assert grad.tolist() == pytest.approx([21.66790, 10.83395, 0.424861, 0.214534], rel=1e-5)
    raw = mask_log(m, SimpleNamespace(eps=0.01, normalize=False))
    assert float(raw[2].detach()) == pytest.approx(math.log(51))


def test_the_penalty_hook_adds_lambda_times_the_slope_on_kept_entries_only():
    net = tiny_net()
    wrapper = RelaxedMaskedModel(net, ["0.weight", "2.weight"], parameterisation="clip", init=1.0)
    with torch.no_grad():
        wrapper.score("0.weight").fill_(0.5)
        wrapper.score("2.weight").fill_(0.01)
    pruned = torch.zeros(2, 3, dtype=torch.bool)
    pruned[0, 0] = True
    wrapper.set_keep({"0.weight": torch.ones(3, 4, dtype=torch.bool), "2.weight": ~pruned})
    for score in wrapper.scores.values():
        score.grad = torch.full_like(score, 0.25)  # a data gradient already there: the penalty adds to it
    lam = 1e-3
    cost, slope = penalty_of("mask_log", LOG_CFG)
    MaskPenalty(wrapper, cost, lam, slope=slope).before_step(None)  # the closed-form slope
    first, second = wrapper.score("0.weight").grad, wrapper.score("2.weight").grad
    assert torch.allclose(first, torch.full_like(first, 0.25 + lam * 0.424861), atol=1e-8)
    assert float(second[0, 0]) == pytest.approx(0.25)  # pruned by b: no penalty
    assert float(second[1, 2]) == pytest.approx(0.25 + lam * 10.83395, rel=1e-5)
    mean = MaskPenalty(wrapper, lambda m: mask_l1(m, LOG_CFG), 1.0, reduction="mean")
    assert float(mean.penalty().detach()) == pytest.approx((12 * 0.5 + 5 * 0.01) / 17)


def test_sigmoid_parameterisation_gradient_by_hand():
    """m = sigmoid(beta s) / sigmoid(s0), s0 = 0, beta = 2, s = 0.3: sigmoid(0.6) = 0.645656, its derivative
    0.645656 * 0.354344 = 0.228784, so d(lambda m)/ds = lambda * 2 * 0.228784 / 0.5 = 0.915136 lambda."""
    net = tiny_net()
    wrapper = RelaxedMaskedModel(net, ["0.weight"], parameterisation="sigmoid", init=0.0)
    assert torch.allclose(wrapper.relaxed("0.weight"), torch.ones(3, 4))  # scaled: the dense network at start
    wrapper.temperature.fill_(2.0)
    with torch.no_grad():
        wrapper.score("0.weight").fill_(0.3)
    MaskPenalty(wrapper, lambda m: mask_l1(m, LOG_CFG), 0.1).before_step(None)  # autograd
    assert torch.allclose(wrapper.score("0.weight").grad, torch.full((3, 4), 0.0915136), atol=1e-6)
    wrapper.score("0.weight").grad = None
    cost, slope = penalty_of("mask_l1", LOG_CFG)
    MaskPenalty(wrapper, cost, 0.1, slope=slope).before_step(None)  # closed form
    assert torch.allclose(wrapper.score("0.weight").grad, torch.full((3, 4), 0.0915136), atol=1e-6)
    assert float(wrapper.values()["0.weight"][0, 0]) == pytest.approx(0.645656, abs=1e-6)  # unscaled


@pytest.mark.parametrize("parameterisation", ["clip", "sigmoid"])
@pytest.mark.parametrize("name", ["mask_l1", "mask_log"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_closed_form_penalty_gradients_equal_autograd(parameterisation, name, reduction):
    grads = []
    for use_slope in (True, False):
        wrapper = RelaxedMaskedModel(tiny_net(), ["0.weight", "2.weight"], parameterisation=parameterisation,
                                     init=1.0 if parameterisation == "clip" else 0.0)  # fmt: skip
        wrapper.temperature.fill_(3.0)
        with torch.no_grad():
            for score in wrapper.scores.values():
                score.copy_(torch.rand(score.shape, generator=torch.Generator().manual_seed(4)))
        keep = {n: torch.rand(wrapper.keep(n).shape, generator=torch.Generator().manual_seed(5)) > 0.3
                for n in wrapper.names}  # fmt: skip
        wrapper.set_keep(keep)
        cost, slope = penalty_of(name, LOG_CFG)
        MaskPenalty(wrapper, cost, 0.01, slope=slope if use_slope else None, reduction=reduction).before_step(None)
        grads.append([wrapper.score(n).grad.clone() for n in wrapper.names])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*grads))


# ------------------------------------------------------------------------------------------------ mechanism
def test_forward_is_the_network_with_weights_times_the_mask_and_the_mask_gradient_is_grad_times_w():
    net = tiny_net()
    wrapper = RelaxedMaskedModel(net, ["0.weight"], parameterisation="clip", init=1.0)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(wrapper(x), net(x))
    m = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        wrapper.score("0.weight").copy_(m)
    out = wrapper(x)
    effective = (net[0].weight * m).detach().requires_grad_(True)
    reference = nn.functional.linear(torch.relu(nn.functional.linear(x, effective, net[0].bias)), net[2].weight,
                                     net[2].bias)  # fmt: skip
    assert torch.allclose(out, reference, atol=1e-6)
    out.sum().backward()
    reference.sum().backward()
    assert torch.allclose(wrapper.score("0.weight").grad, effective.grad * net[0].weight.detach(), atol=1e-6)
    assert torch.allclose(net[0].weight.grad, effective.grad * m, atol=1e-6)


def test_projection_keeps_masks_in_the_unit_box_through_large_steps():
    net = tiny_net()
    wrapper = RelaxedMaskedModel(net, ["0.weight", "2.weight"], parameterisation="clip", init=1.0)
    optimizer = torch.optim.SGD(wrapper.scores.parameters(), lr=50.0)
    project = ProjectToUnitBox(wrapper)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(wrapper(x), y).backward()
        MaskPenalty(wrapper, lambda m: mask_l1(m, LOG_CFG), 0.02).before_step(None)
        optimizer.step()
        project.after_step(None)
        values = torch.cat([s.detach().reshape(-1) for s in wrapper.scores.values()])
        assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(values.min()) == 0.0  # the box is active: the projection did something


def test_temperature_follows_cs_schedule_and_reaches_final_at_the_last_epoch():
    wrapper = RelaxedMaskedModel(tiny_net(), ["0.weight"], parameterisation="sigmoid", init=0.0)
    schedule = TemperatureSchedule(wrapper, 200.0, 5)
    assert [schedule.beta(e) for e in range(6)] == pytest.approx([1, 200**0.25, 200**0.5, 200**0.75, 200, 200])
    schedule.on_stage_start(None)
    assert float(wrapper.temperature) == 1.0
    schedule.on_epoch_end(SimpleNamespace(epoch=5), {})
    assert float(wrapper.temperature) == pytest.approx(200.0)


def test_count_threshold_is_exact_and_breaks_ties_by_weight_magnitude():
    net = tiny_net()
    names = ["0.weight", "2.weight"]
    wrapper = RelaxedMaskedModel(net, names, parameterisation="clip", init=1.0)  # every m ties at 1
    for density in (0.5, 0.3, 0.1):
        mask = wrapper.threshold_by_count(density, "global")
        assert mask.num_kept() == kept_count(18, density)
        magnitude = {"0.weight": net[0].weight.detach().abs(), "2.weight": net[2].weight.detach().abs()}
        kept = torch.cat([magnitude[n][mask[n]] for n in names])
        dropped = torch.cat([magnitude[n][~mask[n]] for n in names])
        assert float(kept.min()) >= float(dropped.max())
    layerwise = wrapper.threshold_by_count(0.5, "layerwise")
    assert layerwise.layer_kept() == {"0.weight": 6, "2.weight": 3}
    with torch.no_grad():
        wrapper.score("0.weight").fill_(0.4)
        wrapper.score("0.weight")[0, :2] = 0.9
    assert wrapper.threshold_by_value(0.5).num_kept() == 2 + 6


def test_mask_parameters_get_their_own_group_rate_and_no_weight_decay_and_keep_them_on_reload():
    wrapper = RelaxedMaskedModel(tiny_net(), ["0.weight"], mask_group={"lr_scale": 0.5, "weight_decay": 0.0})
    cfg = SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    optimizer = build_optimizer(wrapper.optimizer_groups(), cfg)
    weights, masks = optimizer.param_groups
    assert masks["params"] == [wrapper.score("0.weight")] and len(weights["params"]) == 4
    assert (weights["weight_decay"], masks["weight_decay"]) == (5e-4, 0.0)
    set_learning_rate(optimizer, 0.2)
    assert (weights["lr"], masks["lr"]) == (0.2, 0.1)
    state = optimizer.state_dict()
    again = build_optimizer(wrapper.optimizer_groups(), cfg)
    load_state_keeping_hyperparameters(again, state)
    assert again.param_groups[1]["weight_decay"] == 0.0 and again.param_groups[0]["weight_decay"] == 5e-4


def test_round_densities_hard_rounds_are_geometric_soft_rounds_record_the_final():
    hard = SimpleNamespace(rounds=3, round_reset="hard")
    assert round_densities(hard, 0.125) == pytest.approx([0.5, 0.25, 0.125])
    assert round_densities(SimpleNamespace(rounds=3, round_reset="soft"), 0.1) == [0.1, 0.1, 0.1]


# ------------------------------------------------------------------------------------------------ end to end
def _ticket_masked_exactly(run_dir, mask: Mask) -> None:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    for name in mask:
        assert torch.count_nonzero(state[name][~mask[name]]) == 0, name
        assert torch.count_nonzero(state[name][mask[name]]) == mask[name].sum(), name


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=relaxed_mask", "regularizer=mask_log", "regularizer.coefficient=1e-2"],
        ["method=relaxed_mask", "method.retrain_from=finetune", "method.rounds=2", "sparsity.scope=layerwise"],
        ["method=cs", "method.rounds=2", "method.threshold_mode=target", "method.rewind_to=1"],
    ],
    ids=["log-rewind", "l1-finetune-2-rounds", "cs-target"],
)
def test_the_ticket_trains_exactly_the_thresholded_mask(tmp_path, data_root, overrides):
    cfg = config(data_root, *overrides)
    summary = run_experiment(cfg, tmp_path / "run")
    rounds = cfg.method.rounds
    mask = Mask.load(tmp_path / "run" / "masks" / f"round_{rounds:02d}.pt")
    total = mask.numel()
    assert mask.num_kept() == kept_count(total, 0.2) if cfg.sparsity.scope == "global" else True
    if cfg.sparsity.scope == "layerwise":
        assert all(k == kept_count(mask[n].numel(), 0.2) for n, k in mask.layer_kept().items())
    assert summary.final.density == pytest.approx(mask.density())
    _ticket_masked_exactly(tmp_path / "run", mask)
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "epoch"]
    relaxed = [r for r in records if r["key"].endswith("/relaxed")]
    assert len(relaxed) == 3 * rounds and all(0.0 <= r["mask_mean"] for r in relaxed)
    if cfg.method.mask_param == "clip":
        assert all(r["mask_mean"] <= 1.0 for r in relaxed)
    details = json.loads((tmp_path / "run" / "summary.json").read_text())["details"]["relaxed"]
    assert [r["round"] for r in details["rounds"]] == list(range(1, rounds + 1))


def test_a_relaxed_run_killed_mid_epoch_resumes_to_the_same_summary_and_masks(tmp_path, data_root):
    overrides = [*BASE, "method=cs", "method.rounds=2", "method.threshold_mode=target", "method.rewind_to=1",
                 "logger.console=plain"]  # fmt: skip
    # 12 steps per epoch: round 2, second epoch (beta > 1)
    assert_killed_run_resumes_identically(tmp_path, overrides, "round02/relaxed:20", ["round_01", "round_02"],
                                          data_root)  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=unilth", "regularizer=mask_log"], "regularizer='mask_log' is not accepted: expected linear, loglaw"),
        (
            ["method=relaxed_mask", "regularizer=linear"],
            "regularizer='linear' is not accepted: expected mask_l1",
        ),
        (["method=lth_iter", "regularizer=mask_l1"], "regularizer='mask_l1' is not accepted: expected none with met"),
        (["method=relaxed_mask", "method.mask_init=1.5"], "method.mask_init"),
        (["method=relaxed_mask", "method.rewind_to=3"], "method.rewind_to"),
        (["method=relaxed_mask", "regularizer.name=mask_lg"], "regularizer.name='mask_lg'"),
    ],
)
def test_bad_relaxed_options_fail_in_one_line(data_root, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(data_root, *overrides)


def test_cs_takes_its_published_penalty_and_parameterisation(data_root):
    cs = config(data_root, "method=cs")
    assert (cs.regularizer.name, cs.regularizer.coefficient, cs.method.mask_param) == ("mask_l1", 1e-8, "sigmoid")
    assert (cs.method.rounds, cs.method.round_reset, cs.method.rewind_to, cs.method.final_temp) == (3, "soft", 2, 200)


# ------------------------------------------------------------------------------------------ pixel experiment
def test_keep_classes_relabels_in_the_given_order_and_drops_the_rest():
    from lth_runner.data.base import ArrayDataset, keep_classes

    y = torch.tensor([0, 1, 2, 3, 4, 9, 4, 0])
    arrays = ArrayDataset(torch.arange(8).float()[:, None], y, torch.arange(3).float()[:, None],
                          torch.tensor([9, 5, 4]), 10)  # fmt: skip
    kept = keep_classes(arrays, [4, 9])
    assert kept.train_x.flatten().tolist() == [4.0, 5.0, 6.0] and kept.train_y.tolist() == [0, 1, 0]
    assert kept.test_y.tolist() == [1, 0] and kept.num_classes == 2
    with pytest.raises(ConfigError, match="dataset.classes"):
        keep_classes(arrays, [4, 12])


def test_binary_logistic_regression_is_one_logit_whose_weight_row_is_a_pixel_mask():
    from lth_runner.models.mlp import logistic

    torch.manual_seed(0)
    model = logistic((1, 28, 28), 2)
    assert tuple(model.fc.weight.shape) == (1, 784)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    z = model.fc(x.flatten(1))[:, 0]
    assert torch.equal(out[:, 0], torch.zeros(3))
    assert torch.allclose(torch.softmax(out, 1)[:, 1], torch.sigmoid(z))  # softmax([0, z]) = sigmoid(z)
    assert tuple(logistic((1, 28, 28), 10).fc.weight.shape) == (10, 784)
