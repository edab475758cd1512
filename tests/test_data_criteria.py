"""SNIP and GraSP, the data-driven pruning criteria (lth_runner/sparse/criteria.py), against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_runner.errors import UserError
from lth_runner.sparse import CRITERIA, ScoreContext


class Batches:
    def __init__(self, *batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_snip_is_the_gradient_times_weight_magnitude_of_the_training_loss():
    """For logits z = W x and mean cross-entropy over the batch, dL/dW = (softmax(z) - onehot(y)) x^T / n."""
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    y = torch.tensor([0, 2])
    model = linear(w)
    expected_grad = (F.softmax(x @ w.T, dim=1) - F.one_hot(y, 3).float()).T @ x / 2
    scores = CRITERIA.get("snip")({"weight": model.weight}, ScoreContext(model=model, batches=Batches((x, y))))
    assert torch.allclose(scores["weight"], (expected_grad * w).abs(), atol=1e-6)
    assert model.weight.grad is None  # scoring leaves no gradients behind


def test_snip_sums_the_configured_number_of_batches_and_leaves_running_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    model.eval()
    batches = Batches(*[(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)])
    weights = {"0.weight": model[0].weight, "3.weight": model[3].weight}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = CRITERIA.get("snip")(weights, ScoreContext(model=model, batches=batches, options={"criterion_batches": 1}))
    two = CRITERIA.get("snip")(weights, ScoreContext(model=model, batches=batches, options={"criterion_batches": 2}))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and not model.training
    assert not torch.allclose(one["0.weight"], two["0.weight"])


def test_grasp_is_weight_times_hessian_gradient_product_with_temperature_and_balanced_halves():
    """Hand check with the explicit Hessian: g = sum over the two halves of d/dw CE(Wx/T), Hg = (H_1 + H_2) g,
    keep-score w * Hg (GraSP removes the largest -w * Hg)."""
    torch.manual_seed(1)
    w = torch.randn(3, 4)
    x = torch.randn(12, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    T = 2.0
    # per class 2 examples, interleaved by class: the first two of each class in batch order
    chosen = torch.tensor([0, 1, 2, 3, 4, 5])
    xs, ys = x[chosen], y[chosen]
    halves = [(xs[:3], ys[:3]), (xs[3:], ys[3:])]

    def loss(flat, hx, hy):
        return F.cross_entropy(hx @ flat.view(3, 4).T / T, hy)

    flat = w.reshape(-1)
    g = sum(torch.autograd.functional.jacobian(lambda f, h=h: loss(f, *h), flat) for h in halves)
    hessian = sum(torch.autograd.functional.hessian(lambda f, h=h: loss(f, *h), flat) for h in halves)
    expected = (flat * (hessian @ g)).view(3, 4)
    model = linear(w)
    context = ScoreContext(
        model=model,
        batches=Batches((x[:6], y[:6]), (x[6:], y[6:])),
        options={"grasp_samples_per_class": 2, "grasp_temperature": T, "num_classes": 3},
    )
    scores = CRITERIA.get("grasp")({"weight": model.weight}, context)
    assert torch.allclose(scores["weight"], expected, atol=1e-6)


def test_data_criteria_without_data_say_so_in_one_line():
    with pytest.raises(UserError, match="snip needs the model and training batches"):
        CRITERIA.get("snip")({"w": torch.ones(2)}, ScoreContext())


@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_every_method_can_rank_by_a_data_criterion(tmp_path, data_root, criterion):
    """LTH with SNIP/GraSP: exact kept count, and a mask other than the magnitude one of the same weights."""
    from lth_runner.config.compose import compose_config
    from lth_runner.config.validate import build_run_config
    from lth_runner.session import run_experiment
    from lth_runner.sparse import Mask, kept_count, prune_to_density

    overrides = ["model=mlp", "dataset=mnist1d", "dataset.num_samples=1000", "model.hidden=[32]", "trainer.epochs=2",
                 "sparsity=80", "sparsity.rounds=1", "logger.console=none", "logger.plots=false",
                 "trainer.keep_round_weights=true", f"paths.data_root={data_root}"]  # fmt: skip
    cfg = build_run_config(compose_config([*overrides, "method=lth", f"method.criterion={criterion}"]))
    summary = run_experiment(cfg, tmp_path)
    mask = Mask.load(tmp_path / "masks" / "round_01.pt")
    total = 40 * 32 + 32 * 10
    assert summary.final.kept == kept_count(total, 0.2) == mask.num_kept()
    dense = torch.load(tmp_path / "checkpoints" / "round00_dense.final.pt", weights_only=True)
    magnitude = prune_to_density({n: dense[n].abs() for n in mask.names()}, 0.2)
    assert mask != magnitude
