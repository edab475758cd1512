"""Optimal Brain Damage (LeCun et al. 1989): the Hessian diagonals (empirical Fisher against a per-example loop,
Hutchinson against the exact Hessian), the saliency ``h_ii w_i^2 / 2`` on a model whose Hessian is known in
closed form, OBD against magnitude, the method end to end, the criterion under prune_at_init, errors and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import lth_runner.methods.l1  # noqa: F401  (registers the built-in methods' modules on first use)
from lth_runner.catalog import CRITERIA
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import UserError
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, kept_count, prune_to_density
from lth_runner.sparse.criteria import ScoreContext, magnitude
from lth_runner.sparse.saliency import fisher_diagonal, hutchinson_diagonal, obd, obd_saliency
from tests.conftest import QUIET_MNIST1D, run_cli

BASE = QUIET_MNIST1D
PRUNABLE = 32 * 40 + 32 * 32 + 10 * 32  # 2624


def run(out, data_root, *overrides, method="obd"):
    cfg = build_run_config(compose_config([*BASE, f"method={method}", f"paths.data_root={data_root}", *overrides]))
    return run_experiment(cfg, out).to_dict(), out


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors.values()])


# ------------------------------------------------------------------------------------------- Hessian diagonals
def tiny_mlp() -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():  # running statistics far from (0, 1): evaluation mode visibly differs from training mode
        model[1].running_mean.copy_(torch.tensor([0.5, -0.3, 0.2, 1.0]))
        model[1].running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 3.0]))
    x = torch.randn(10, 3, dtype=torch.double)
    y = torch.randint(0, 3, (10,))
    weights = {"0.weight": model[0].weight.detach(), "3.weight": model[3].weight.detach()}
    return model, weights, x, y


def test_fisher_diagonal_is_the_mean_squared_per_example_gradient():
    model, weights, x, y = tiny_mlp()
    expected = {n: torch.zeros_like(w) for n, w in weights.items()}
    model.eval()  # per-example gradients by a Python loop, BatchNorm on its running statistics
    for xi, yi in zip(x[:7], y[:7]):
        loss = F.cross_entropy(model(xi.unsqueeze(0)), yi.unsqueeze(0))
        grads = torch.autograd.grad(loss, [model[0].weight, model[3].weight])
        for e, g in zip(expected.values(), grads):
            e.add_(g**2 / 7)
    model.train()
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]  # 7 examples of 10, across two batches, in chunks of 3
    fisher = fisher_diagonal(model, weights, batches, max_examples=7, chunk_size=3)
    assert model.training  # the mode is restored
    for n in weights:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-10, atol=1e-14)
    assert float(flat(fisher).min()) >= 0.0 and float(flat(fisher).max()) > 1e-3
    # every example of the batches when uncapped, independent of the chunking
    whole = fisher_diagonal(model, weights, batches, chunk_size=10)
    assert not torch.allclose(flat(whole), flat(fisher))
    torch.testing.assert_close(flat(whole), flat(fisher_diagonal(model, weights, [(x, y)], chunk_size=4)))


def exact_hessian_diagonal(model, weights, x, y) -> torch.Tensor:
    shapes = {n: w.shape for n, w in weights.items()}

    def loss(vector):
        parts, start = {}, 0
        for n, shape in shapes.items():
            parts[n] = vector[start : start + shape.numel()].view(shape)
            start += shape.numel()
        return F.cross_entropy(functional_call(model, parts, (x,), strict=False), y)

    model.eval()
    hessian = torch.autograd.functional.hessian(loss, flat(weights))
    model.train()
    return hessian


def test_hutchinson_converges_to_the_exact_hessian_diagonal():
    model, weights, x, y = tiny_mlp()
    hessian = exact_hessian_diagonal(model, weights, x, y)
    exact = hessian.diagonal()
    assert float(exact.min()) < 0 < float(exact.max())  # an untrained network: the Hessian is indefinite
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]

    def error(probes: int, seed: int = 0) -> tuple[torch.Tensor, float]:
        estimate = flat(hutchinson_diagonal(model, weights, batches, probes=probes, seed=seed))
        return estimate, float((estimate - exact).norm() / exact.norm())

    coarse, coarse_error = error(10)
    fine, fine_error = error(1000)
    # measured (seeds 0, 1, 2): 0.67 / 0.62 / 0.64 relative error at 10 probes, 0.045 / 0.043 / 0.059 at 1000
    assert fine_error < 0.08 and coarse_error > 5 * fine_error
    # every coordinate within 4 standard deviations sqrt(sum_{j != i} H_ij^2 / K) of the truth (measured: <= 3.1)
    spread = (((hessian**2).sum(dim=1) - exact**2) / 1000).sqrt()
    assert float(((fine - exact).abs() / spread).max()) < 4.0
    assert torch.equal(torch.sign(fine[exact.abs() > 0.05]), torch.sign(exact[exact.abs() > 0.05]))
    # the same probes for every batch: batching does not change the estimate; the seed does
    torch.testing.assert_close(flat(hutchinson_diagonal(model, weights, [(x, y)], probes=10)), coarse)
    assert not torch.allclose(error(10, seed=1)[0], coarse)


# ------------------------------------------------------------------------------------------------ saliency
class OneLogit(nn.Module):
    """Logits ``(0, w . x)``: the cross-entropy is the logistic loss of ``z = w . x`` with ``p = sigmoid(z)``, so
    ``dl/dw = (p - y) x`` and ``d2l/dw2 = p (1 - p) x x^T``. With one nonzero input per example, ``x x^T`` is
    diagonal: the Hessian is exactly diagonal and any Rademacher probe gives it exactly (``z_i^2 = 1``)."""

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.fc = nn.Linear(len(w), 1, bias=False).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([w], dtype=torch.double))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def one_hot_inputs(scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two examples per input feature j, ``+-scales[j] * e_j`` with labels 1 and 0."""
    rows, labels = [], []
    for j, a in enumerate(scales):
        for sign, label in ((1.0, 1), (-1.0, 0)):
            row = torch.zeros(len(scales), dtype=torch.double)
            row[j] = sign * a
            rows.append(row)
            labels.append(label)
    return torch.stack(rows), torch.tensor(labels)


def context(model, x, y, **options) -> ScoreContext:
    return ScoreContext(seed=3, model=model, batches=[(x, y)], options={"criterion_batches": 1, **options})


def test_saliency_is_half_w_squared_times_the_hessian_diagonal_by_hand():
    w, scales = [2.0, -0.5, 1.0], [0.5, 3.0, 1.0]
    model = OneLogit(w)
    x, y = one_hot_inputs(scales)
    weights = {"fc.weight": model.fc.weight.detach()}
    # by hand: feature j's two examples have z = +-w_j a_j and p(1 - p) = s(1 - s), s = sigmoid(w_j a_j), for both;
    # the other four examples have x_j = 0. Mean over the 6 examples: h_jj = 2 s(1 - s) a_j^2 / 6.
    # The empirical Fisher: (p - y)^2 x_j^2 = (1 - s)^2 a_j^2 for both examples, mean 2 (1 - s)^2 a_j^2 / 6.
    s = [torch.sigmoid(torch.tensor(wj * a, dtype=torch.double)) for wj, a in zip(w, scales)]
    hessian = torch.stack([2 * sj * (1 - sj) * a**2 / 6 for sj, a in zip(s, scales)])
    fisher = torch.stack([2 * (1 - sj) ** 2 * a**2 / 6 for sj, a in zip(s, scales)])
    w2 = torch.tensor(w, dtype=torch.double) ** 2
    by_hutchinson = obd(weights, context(model, x, y, obd_hessian="hutchinson", obd_samples=1))["fc.weight"]
    by_fisher = obd(weights, context(model, x, y))["fc.weight"]  # fisher is the default
    torch.testing.assert_close(by_hutchinson.flatten(), w2 * hessian / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(by_fisher.flatten(), w2 * fisher / 2, rtol=1e-12, atol=0)
    # the numbers: w_j a_j = (1, -1.5, 1), s(1 - s) = (0.19661, 0.14915, 0.19661), h = (0.016384, 0.44745,
    # 0.065537), saliency = (4, 0.25, 1) * h / 2: the smallest weight has the largest saliency
    assert by_hutchinson.flatten().tolist() == pytest.approx([0.032769, 0.055930, 0.032769], abs=2e-6)
    assert obd_saliency({"w": torch.tensor([3.0])}, {"w": torch.tensor([0.5])})["w"].item() == 2.25


def test_obd_keeps_the_highest_saliency_not_the_largest_weights():
    # large weights on a nearly constant input are cheap to remove; a small weight on a large input is not
    w, scales = [3.0, 0.4, 2.0, 0.6, 1.5, 0.3], [0.05, 4.0, 0.1, 2.0, 1.0, 0.2]
    model = OneLogit(w)
    x, y = one_hot_inputs(scales)
    weights = {"fc.weight": model.fc.weight.detach()}
    for estimator in ("fisher", "hutchinson"):
        scores = CRITERIA.get("obd")(weights, context(model, x, y, obd_hessian=estimator))
        kept = prune_to_density(scores, 0.5, scope="global")["fc.weight"].flatten()
        # saliencies (hutchinson, exact here): 0.0037, 0.0574, 0.0066, 0.0457, 0.0583, 0.0006
        assert kept.nonzero().flatten().tolist() == [1, 3, 4], estimator
    by_magnitude = prune_to_density(magnitude(weights), 0.5)["fc.weight"].flatten()
    assert by_magnitude.nonzero().flatten().tolist() == [0, 2, 4]  # only w_4 = 1.5 is kept by both


def test_the_criterion_keeps_exact_counts_and_is_deterministic():
    model, weights, x, y = tiny_mlp()
    ctx = ScoreContext(seed=5, model=model, batches=[(x, y)], options={"obd_hessian": "hutchinson", "obd_samples": 8})
    scores = obd(weights, ctx)
    # kept_count rounds half up: 7.2 -> 7 of all 24 weights, 3.6 -> 4 of each layer's 12
    by_rank = flat(scores).argsort(descending=True)[:7].sort().values
    kept = flat(dict(prune_to_density(scores, 0.3, scope="global").items()))
    assert kept.nonzero().flatten().tolist() == by_rank.tolist()
    assert prune_to_density(scores, 0.3, scope="layerwise").layer_kept() == {"0.weight": 4, "3.weight": 4}
    torch.testing.assert_close(flat(obd(weights, ctx)), flat(scores), rtol=0, atol=0)
    other = ScoreContext(seed=6, model=model, batches=[(x, y)], options=ctx.options)
    assert not torch.equal(flat(obd(weights, other)), flat(scores))
    with pytest.raises(UserError, match="sparsity.obd_hessian='exact' is not accepted: expected one of: fisher"):
        obd(weights, ScoreContext(model=model, batches=[(x, y)], options={"obd_hessian": "exact"}))
    with pytest.raises(UserError, match="method.criterion=obd needs the model and training batches"):
        obd(weights, ScoreContext())


# ------------------------------------------------------------------------------------------------ end to end
def test_pretrain_prune_by_obd_finetune_on_mnist1d(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "sparsity.target=0.75", "method.finetune_epochs=2")
    assert summary["status"] == "complete" and summary["prunable_weights"] == PRUNABLE
    mask = Mask.load(out / "masks/obd.pt")
    assert mask.num_kept() == kept_count(PRUNABLE, 0.25) == 656 == summary["final"]["kept"]
    layer_kept = mask.layer_kept()
    assert len(set(layer_kept.values())) > 1 and layer_kept != {"fc1.weight": 320, "fc2.weight": 256, "fc3.weight": 80}
    section = summary["details"]["obd"]
    assert (section["source"], section["scope"], section["hessian"], section["samples"]) == (
        "pretrain/dense",
        "global",
        "fisher",
        8 * 64,
    )  # fmt: skip  (method.hessian_batches = 8 batches of 64)
    assert section["weight_density"] == 0.25 and section["layer_kept"] == layer_kept
    assert section["finetune_lr"] == pytest.approx(0.01)
    assert 0.0 < section["pruned"]["test_acc"] <= 1.0 and section["pretrained"]["test_acc"] > 0.1
    assert summary["final"]["test_acc"] is not None and len(summary["rounds"]) == 2


def test_prune_at_init_with_the_obd_criterion(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method.criterion=obd", "sparsity.target=0.9",
                       "sparsity.obd_hessian=hutchinson", "sparsity.obd_samples=4", "trainer.epochs=1",
                       method="prune_at_init")  # fmt: skip
    assert summary["status"] == "complete" and summary["details"]["criterion"] == "obd"
    assert Mask.load(out / "masks/round_01.pt").num_kept() == kept_count(PRUNABLE, 0.1) == summary["final"]["kept"]


def test_a_bad_estimator_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(UserError) as error:
        build_run_config(compose_config([*BASE, "method=obd", "sparsity.obd_hessian=exact"]))
    message = str(error.value)
    assert "\n" not in message.strip()
    assert "sparsity.obd_hessian='exact' is not accepted: expected one of: fisher, hutchinson" in message
    with pytest.raises(UserError, match="sparsity.obd_samples"):
        build_run_config(compose_config([*BASE, "method=obd", "sparsity.obd_samples=0"]))


@pytest.mark.slow
def test_the_cli_runs_obd_on_real_mnist(tmp_path):
    from tests.conftest import REAL_MNIST

    result = run_cli(
        "model=lenet_300_100", "dataset=mnist", f"dataset.root={REAL_MNIST}", "method=obd", "trainer.epochs=1",
        "method.finetune_epochs=1", "sparsity=90", "trainer.num_threads=1", "logger.plots=false",
        f"hydra.run.dir={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["details"]["obd"]["hessian"] == "fisher"
    assert Mask.load(tmp_path / "masks/obd.pt").num_kept() == summary["final"]["kept"]


@pytest.mark.parametrize("arch", ["vgg19", "resnet32x2"])
def test_the_table1_presets_spend_the_160_epochs_on_fine_tuning(arch):
    cfg = build_run_config(compose_config([f"experiment=jackpots/table1_obd_{arch}_cifar10"]))
    assert (cfg.method.name, cfg.method.pretrained, cfg.method.scope, cfg.method.finetune_epochs) == (
        "obd", "auto", "global", 160
    )  # fmt: skip
    assert (cfg.optim.lr * cfg.method.finetune_lr_scale, cfg.optim.weight_decay, cfg.trainer.batch_size) == (
        0.1, 5e-4, 128
    )  # fmt: skip
    assert (cfg.sparsity.target, cfg.sparsity.obd_hessian, cfg.sparsity.exclude_last) == (0.9, "fisher", True)
    other = build_run_config(compose_config([f"experiment=jackpots/table1_obd_{arch}_cifar10", "sparsity=95"]))
    assert other.sparsity.target == 0.95 and other.sparsity.exclude_last
