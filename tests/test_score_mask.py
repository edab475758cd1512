"""The score-mask mechanism of mask search on frozen weights (lth_runner/sparse/score_mask.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lth_runner.config.schema import ModelConfig
from lth_runner.models import build_model
from lth_runner.sparse import Mask, prunable_parameters
from lth_runner.sparse.score_mask import ReselectTopK, ScoreMaskedModel


def tiny_linear() -> nn.Linear:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]))
    return layer


def test_straight_through_gradients_match_the_hand_computed_ones():
    """loss = sum(W_eff x) with x = (1, 2, 3): d loss / d W_eff[j, k] = x[k] for every entry, kept or not, so
    d loss / d s = x[k] * w[j, k] (ranking by s) and x[k] * w[j, k] * sign(s[j, k]) (ranking by |s|)."""
    scores = torch.tensor([[0.5, -0.1, 0.2], [-0.3, 0.4, -0.9]])
    x = torch.tensor([[1.0, 2.0, 3.0]])
    weight = tiny_linear().weight.detach()
    for rank_by, expected in [
        ("value", torch.tensor([[1.0, -4.0, 9.0], [-4.0, 10.0, -18.0]])),
        ("abs", torch.tensor([[1.0, 4.0, 9.0], [4.0, 10.0, 18.0]])),
    ]:
        wrapper = ScoreMaskedModel(tiny_linear(), {"weight": scores}, {"weight": 3}, rank_by=rank_by)
        out = wrapper(x)
        keep = wrapper.keep("weight")
        # value: the 3 largest s are 0.5, 0.4, 0.2; abs: the 3 largest |s| are 0.9, 0.5, 0.4
        assert keep.tolist() == (
            [[True, False, True], [False, True, False]]
            if rank_by == "value"
            else [[True, False, False], [False, True, True]]
        )
        assert torch.equal(out, x @ (weight * keep).T)
        out.sum().backward()
        assert torch.equal(wrapper.score("weight").grad, expected), rank_by
        assert wrapper.model.weight.grad is None  # frozen


def test_exact_kept_counts_per_layer_and_global_even_when_every_score_ties():
    model = build_model(ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [16, 8]}), (12,), 4, seed=0)
    names = list(prunable_parameters(model))
    tied = {n: torch.ones_like(p) for n, p in prunable_parameters(model).items()}
    per_layer = {n: c for n, c in zip(names, (37, 5, 9))}
    wrapper = ScoreMaskedModel(copy.deepcopy(model), tied, per_layer)
    assert {n: int(wrapper.keep(n).sum()) for n in names} == per_layer
    total = sum(p.numel() for p in tied.values())
    wrapper = ScoreMaskedModel(copy.deepcopy(model), tied, 51)
    assert wrapper.mask().num_kept() == 51 and wrapper.mask().numel() == total
    scores = {
        n: torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, (n, p) in enumerate(tied.items())
    }
    wrapper = ScoreMaskedModel(copy.deepcopy(model), scores, 51)
    kept = torch.cat([scores[n].abs()[wrapper.keep(n)] for n in names])
    dropped = torch.cat([scores[n].abs()[~wrapper.keep(n)] for n in names])
    assert kept.numel() == 51 and kept.min() > dropped.max()  # the 51 largest |s| over all layers


def test_training_moves_only_the_scores_and_the_running_statistics_when_asked():
    """SGD with momentum and weight decay on a BN network: weights, biases and BN affine parameters stay
    bit-identical; the scores and the keep-mask change; running statistics update unless frozen."""
    model = build_model(ModelConfig(arch="resnet20", name="resnet20", kwargs={"width": 4}), (3, 8, 8), 10, seed=0)
    weights = prunable_parameters(model)
    scores = {n: torch.empty_like(w).uniform_(-1, 1) for n, w in weights.items()}
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for bn_stats in ("update", "frozen"):
        wrapper = ScoreMaskedModel(
            copy.deepcopy(model), scores, {n: w.numel() // 2 for n, w in weights.items()}, bn_stats=bn_stats
        )
        before = copy.deepcopy(wrapper.model.state_dict())
        first_mask = wrapper.mask()
        trainable = [p for p in wrapper.parameters() if p.requires_grad]
        assert trainable == list(wrapper.scores.values())
        optimizer = torch.optim.SGD(trainable, lr=0.5, momentum=0.9, weight_decay=5e-4)
        reselect = ReselectTopK(wrapper)
        wrapper.train()
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(wrapper(x), y).backward()
            optimizer.step()
            reselect.after_step(None)
        after = wrapper.model.state_dict()
        for name, value in before.items():
            moved = not torch.equal(value, after[name])
            assert moved == (
                bn_stats == "update"
                and name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
            ), name
        assert wrapper.mask() != first_mask
        assert all(int(wrapper.keep(n).sum()) == w.numel() // 2 for n, w in weights.items())


def test_the_found_mask_is_an_ordinary_mask_and_the_exported_network_computes_the_same():
    model = build_model(ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [16]}), (12,), 4, seed=1)
    weights = prunable_parameters(model)
    wrapper = ScoreMaskedModel(copy.deepcopy(model), {n: torch.randn(w.shape) for n, w in weights.items()}, 60)
    mask = wrapper.mask()
    assert isinstance(mask, Mask) and mask.names() == list(weights)  # the names every other method uses
    x = torch.randn(5, 12)
    wrapper.eval()
    expected = wrapper(x)
    exported = wrapper.export()
    assert torch.equal(exported(x), expected)
    assert all(torch.equal(p != 0, mask[n] & (weights[n] != 0)) for n, p in prunable_parameters(exported).items())


def test_a_checkpoint_of_the_wrapper_restores_scores_and_keep_mask_exactly():
    model = build_model(ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [16]}), (12,), 4, seed=1)
    weights = prunable_parameters(model)
    first = ScoreMaskedModel(copy.deepcopy(model), {n: torch.randn(w.shape) for n, w in weights.items()}, 60)
    first.set_keep(
        Mask.random({n: w.shape for n, w in weights.items()}, 0.3, generator=torch.Generator().manual_seed(0))
    )
    second = ScoreMaskedModel(copy.deepcopy(model), {n: torch.zeros(w.shape) for n, w in weights.items()}, 60)
    second.load_state_dict(first.state_dict())
    assert second.mask() == first.mask()
    assert all(torch.equal(second.score(n), first.score(n)) for n in weights)


def test_bad_arguments_name_what_is_accepted():
    with pytest.raises(ValueError, match="rank_by"):
        ScoreMaskedModel(tiny_linear(), {"weight": torch.ones(2, 3)}, 3, rank_by="largest")
    with pytest.raises(ValueError, match="kept=7"):
        ScoreMaskedModel(tiny_linear(), {"weight": torch.ones(2, 3)}, 7)
    with pytest.raises(ValueError, match="not a parameter"):
        ScoreMaskedModel(tiny_linear(), {"fc.weight": torch.ones(2, 3)}, 3)


def test_a_timm_model_is_searched_without_model_specific_layers():
    """Any registered model works: a timm ResNet with BatchNorm, its masked forward equal to the exported network."""
    model = build_model(ModelConfig(arch="timm", name="resnet10t", kwargs={}), (3, 32, 32), 10, seed=0)
    weights = prunable_parameters(model)
    generator = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}
    wrapper = ScoreMaskedModel(model, scores, {n: max(1, w.numel() // 10) for n, w in weights.items()}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = wrapper(x)
        assert torch.allclose(wrapper.export()(x), expected, atol=1e-5)
    assert wrapper.mask().names() == list(weights)


def test_the_incremental_threshold_search_is_exact_along_a_random_walk_with_ties():
    from lth_runner.sparse.select import kth_largest, kth_largest_near, select_top

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5000, generator=generator)
    x[:500] = 0.5  # a block of ties at the threshold's neighbourhood
    k = 2500
    previous, previous_kth = x.clone(), kth_largest([x], k)
    for step in range(30):
        scale = 10.0 ** -(step % 4)  # small and large moves
        x = x + scale * torch.randn(5000, generator=generator) * (step % 3 != 0)
        expected = kth_largest([x], k)
        found = kth_largest_near(x, k, previous, previous_kth)
        assert found == expected, step
        previous, previous_kth = x.clone(), found
    layer = torch.nn.Linear(50, 100, bias=False)
    wrapper = ScoreMaskedModel(layer, {"weight": torch.rand(100, 50, generator=generator)}, {"weight": 1234})
    for _ in range(10):
        with torch.no_grad():
            wrapper.score("weight").add_(0.01 * torch.randn(100, 50, generator=generator))
        wrapper.select_top_k()
        assert torch.equal(wrapper.keep("weight"), select_top({"w": wrapper.ranked()["weight"]}, 1234)["w"])
