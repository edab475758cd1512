"""Paper 002's analysis tools (lth_runner/analysis): Hessian-vector products against the dense Hessian, Hutchinson's
trace against the exact trace, power iteration against eigvalsh, the KL terms and the bound by hand, the landscape,
and ``lth-run-analyze`` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lth_runner.analysis import hessian, landscape, pac_bayes
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment


def small_problem(seed: int = 0, *, linear: bool = False):
    torch.manual_seed(seed)
    model = nn.Linear(5, 3) if linear else nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    return model, [(x[:25], y[:25]), (x[25:], y[25:])]  # two unequal batches: products are example-weighted


def dense_hessian(model: nn.Module, batches) -> torch.Tensor:
    """The exact Hessian of the mean cross-entropy over all examples, over the flattened parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat)


def masks_for(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=generator) > 0.4 for n, p in model.named_parameters() if "weight" in n}


def projection(model: nn.Module, masks) -> torch.Tensor:
    return torch.cat([masks[n].flatten().float() if n in masks else torch.ones(p.numel())
                      for n, p in model.named_parameters()])  # fmt: skip


def test_hessian_vector_products_equal_the_dense_hessian_projected_on_the_subnetwork():
    model, batches = small_problem()
    masks = masks_for(model)
    params, sub = hessian.subnetwork(model, masks, "unpruned")
    operator = hessian.HessianOperator(model, batches, params, sub)
    exact = dense_hessian(model, batches)
    p = projection(model, masks)
    v = [torch.randn(t.shape, generator=torch.Generator().manual_seed(3)) for t in params.values()]
    hv = torch.cat([t.flatten() for t in operator(v)])
    expected = p * (exact @ (p * torch.cat([t.flatten() for t in v])))
    assert torch.allclose(hv, expected, atol=1e-5)
    assert operator.dimension() == int(p.sum())


class QuadraticOperator(hessian.HessianOperator):
    """The Hessian of ``f(theta) = theta^T A theta / 2`` (that is, ``A``) on a masked parameter vector."""

    def __init__(self, matrix: torch.Tensor, mask: torch.Tensor) -> None:
        self.matrix, self.params, self.masks, self.products = matrix, [torch.zeros(matrix.shape[0])], [mask.float()], 0

    def __call__(self, v):
        return self.project([self.matrix @ self.project(v)[0]])


def test_hutchinson_trace_of_a_quadratic_converges_to_the_trace_on_the_unpruned_coordinates():
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(12, 12, generator=generator)
    matrix, mask = root @ root.T, torch.rand(12, generator=generator) > 0.3
    exact = float(torch.diagonal(matrix)[mask].sum())
    estimate = hessian.hutchinson_trace(QuadraticOperator(matrix, mask), max_iter=20000, tol=0.0, generator=generator)
    # Rademacher probes: the variance is 2 * sum_{i != j} A_ij^2 over the subspace; 20000 probes give a standard
    # error of 0.7% of the trace here (measured 0.3 standard errors off).
    assert abs(estimate.trace - exact) < 4 * estimate.std_error and abs(estimate.trace - exact) < 0.03 * exact
    pair = hessian.top_eigenpair(QuadraticOperator(matrix, mask), max_iter=2000, tol=1e-12, generator=generator)
    assert pair.value == pytest.approx(float(torch.linalg.eigvalsh(matrix[mask][:, mask])[-1]), rel=1e-6)


def test_hutchinson_trace_of_a_small_mlp_matches_the_dense_trace_of_the_restricted_hessian():
    model, batches = small_problem()
    masks = masks_for(model)
    operator = hessian.HessianOperator(model, batches, *hessian.subnetwork(model, masks, "unpruned"))
    exact = float((torch.diagonal(dense_hessian(model, batches)) * projection(model, masks)).sum())
    estimate = hessian.hutchinson_trace(operator, max_iter=150, tol=0.0, generator=torch.Generator().manual_seed(0))
    assert estimate.iterations == 150
    # 150 probes: a standard error of about 6% of this trace; 4 standard errors leave room on any seed.
    assert abs(estimate.trace - exact) < 4 * estimate.std_error
    stopped = hessian.hutchinson_trace(operator, generator=torch.Generator().manual_seed(0))  # PyHessian's rule
    assert 2 <= stopped.iterations <= 100


def test_power_iteration_finds_the_top_eigenvalue_of_eigvalsh_on_a_convex_model():
    model, batches = small_problem(linear=True)  # softmax regression: a PSD Hessian, a well-separated top
    masks = masks_for(model)
    operator = hessian.HessianOperator(model, batches, *hessian.subnetwork(model, masks, "unpruned"))
    p = projection(model, masks).bool()
    exact = torch.linalg.eigvalsh(dense_hessian(model, batches)[p][:, p].double())
    pair = hessian.top_eigenpair(operator, max_iter=500, tol=1e-9, generator=torch.Generator().manual_seed(0))
    assert pair.value == pytest.approx(float(exact[-1]), rel=1e-4)
    flat = torch.cat([t.flatten() for t in pair.vector])
    assert float(flat.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(flat[~projection(model, masks).bool()].abs().max()) == 0.0  # lives in the subnetwork


def test_landscape_is_the_loss_at_alpha_zero_and_restores_the_weights():
    model, batches = small_problem()
    params = dict(model.named_parameters())
    before = {n: t.detach().clone() for n, t in params.items()}
    direction = [torch.ones_like(t) for t in params.values()]
    curve = landscape.loss_along(model, params, direction, batches, alphas=(-0.5, 0.0, 0.5))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert curve.losses[1] == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-6)
    assert curve.losses[0] != pytest.approx(curve.losses[1])
    assert all(torch.equal(before[n], t) for n, t in params.items())


# ------------------------------------------------------------------------------------------------ PAC-Bayes
def test_spike_and_slab_kl_by_hand():
    """Entries a, b kept with theta_bar - theta_init = 0.1, -0.2; c, d pruned; s_q = 0.05, s_p = 0.1, l_p = 0.25.
    Per kept entry: log(0.1/0.05) + (0.05^2 + d^2)/(2 * 0.1^2) - 1/2 - log 0.25
      a: 0.693147 + (0.0025 + 0.01)/0.02 - 0.5 + 1.386294 = 0.693147 + 0.625 - 0.5 + 1.386294 = 2.204441
      b: 0.693147 + (0.0025 + 0.04)/0.02 - 0.5 + 1.386294 = 0.693147 + 2.125 - 0.5 + 1.386294 = 3.704441
    Per pruned entry: -log(0.75) = 0.287682. Total 2.204441 + 3.704441 + 2 * 0.287682 = 6.484246."""
    init = {"w": torch.tensor([0.3, 0.5, 0.7, -0.2])}
    trained = {"w": torch.tensor([0.4, 0.3, 0.0, 0.0])}
    masks = {"w": torch.tensor([True, True, False, False])}
    kl = pac_bayes.spike_and_slab_kl(trained, init, masks, sigma_q=0.05, sigma_p=0.1, density=0.25)
    assert kl == pytest.approx(6.484246, abs=1e-5)
    # an unmasked tensor (a bias) carries the Gaussian part only: log 2 + (0.0025 + 0.09)/0.02 - 0.5 = 4.818147
    trained["b"], init["b"] = torch.tensor([0.3]), torch.tensor([0.0])
    with_bias = pac_bayes.spike_and_slab_kl(trained, init, masks, sigma_q=0.05, sigma_p=0.1, density=0.25,
                                            others=["b"])  # fmt: skip
    assert with_bias - kl == pytest.approx(4.818147, abs=1e-5)
    assert pac_bayes.bernoulli_kl(1.0, 0.1) == pytest.approx(math.log(10))
    assert pac_bayes.bernoulli_kl(0.3, 0.3) == pytest.approx(0.0)


def test_zero_mean_gaussian_kl_is_the_squared_norm_over_two_sigma_squared_at_equal_scales():
    trained = {"w": torch.tensor([0.4, -0.3, 0.0]), "b": torch.tensor([1.2])}
    squared = 0.16 + 0.09 + 1.44
    assert pac_bayes.gaussian_kl(trained, sigma_q=0.2, sigma_p=0.2) == pytest.approx(squared / (2 * 0.04))
    # s_q = 0.1, s_p = 0.2: 4 * (log 2 + 0.01/0.08 - 0.5) + 1.69/0.08 = 4 * 0.318147 + 21.125 = 22.397589
    assert pac_bayes.gaussian_kl(trained, sigma_q=0.1, sigma_p=0.2) == pytest.approx(22.397589, abs=1e-5)


def test_the_variational_kl_bound_by_hand_and_the_union_bound_over_prior_scales():
    """L = 0.1, KL = 100, n = 1000, delta = 0.05: B = (100 + log(2 sqrt(1000)/0.05))/1000 = (100 + 7.142827)/1000
    = 0.107143; first = 0.1 + 0.107143 + sqrt(0.107143 * 0.307143) = 0.388549; second = 0.1 + sqrt(0.053571)
    = 0.331455, the smaller."""
    bound, b = pac_bayes.variational_kl_bound(0.1, 100.0, 1000, 0.05)
    assert b == pytest.approx(0.107143, abs=1e-6) and bound == pytest.approx(0.331455, abs=1e-6)
    best = pac_bayes.optimise({0.1: 0.1}, lambda sq, sp: 100.0, n=1000, delta=0.05, sigma_p_grid=(0.1, 0.2))
    assert best.b == pytest.approx((100 + math.log(2 * math.sqrt(1000) / 0.025)) / 1000)  # delta / 2 each
    assert best.delta == 0.05


def test_posterior_error_without_noise_is_the_error_and_noise_leaves_pruned_weights_alone():
    model, batches = small_problem()
    params = dict(model.named_parameters())
    masks = {n: m for n, m in masks_for(model).items()}
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    error = float((model(x).argmax(1) != y).float().mean())
    clean = pac_bayes.posterior_error(model, params, masks, 0.0, batches, draws=2, generator=torch.Generator())
    assert clean == pytest.approx(error)
    before = {n: t.detach().clone() for n, t in params.items()}
    seen = []
    hook = model[0].register_forward_pre_hook(lambda module, inputs: seen.append(module.weight.detach().clone()))
    pac_bayes.posterior_error(model, params, masks, 1.0, batches, draws=3, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert len(seen) == 6 and all(torch.count_nonzero(w[~masks["0.weight"]]) == 0 for w in seen)  # never perturbed
    assert all(not torch.equal(w, before["0.weight"]) for w in seen)  # the kept entries were
    assert all(torch.equal(before[n], t) for n, t in params.items())  # restored exactly


# ------------------------------------------------------------------------------------------------ end to end
def test_lth_run_analyze_on_a_finished_run_prints_and_writes_everything(tmp_path, data_root):
    cfg = build_run_config(compose_config([
        "experiment=demo", "model.hidden=[32,32]", "dataset.num_samples=1000", "trainer.epochs=2", "sparsity.rounds=2",
        "method.controls=[reinit]", "logger.console=none", "logger.plots=false", f"paths.data_root={data_root}",
    ]))  # fmt: skip
    run_experiment(cfg, tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "-m", "lth_runner.analysis.cli", str(tmp_path / "run"), "--examples", "200",
         "--bound-examples", "300", "--draws", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Hessian trace" in done.stdout and "top eigenvalue" in done.stdout and "spike-and-slab" in done.stdout
    out = tmp_path / "run" / "analysis" / "round_02"
    assert (out / "landscape.png").is_file() and (out / "weights.png").is_file()
    record = json.loads((out / "analysis.json").read_text())
    assert record["stage"] == "round02/ticket" and record["hessian"]["trace"] > 0
    assert len(record["landscape"]["loss"]) == 21
    assert record["landscape"]["loss"][10] == pytest.approx(record["hessian"]["train_loss"], rel=1e-4)
    assert record["pac_bayes"]["spike_and_slab"]["n"] == 300
    bad = subprocess.run([sys.executable, "-m", "lth_runner.analysis.cli", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not a run directory" in bad.stderr


@pytest.mark.parametrize(
    ("argument", "message"),
    [(["--examples", "0"], "--examples: 0: expected an integer >= 1"), (["--delta", "1.5"], "--delta: 1.5: expected")],
)
def test_lth_run_analyze_refuses_bad_arguments_in_one_line(tmp_path, capsys, argument, message):
    from lth_runner.analysis.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path), *argument])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
