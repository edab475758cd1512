"""Pruned weights stay exactly zero under every optimizer, and the masks match each weight's layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lth_runner.sparse import Mask, MaskEnforcer, prunable_parameters


def train_steps(model, optimizer, enforcer=None, steps=25):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=generator)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        if enforcer:
            enforcer.apply_to_gradients()
        optimizer.step()
        if enforcer:
            enforcer.apply_to_weights()


def sparse_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    params = prunable_parameters(model)
    mask = Mask.random({n: p.shape for n, p in params.items()}, 0.3, generator=torch.Generator().manual_seed(0))
    return model, params, mask


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=0.01),
    ],
)
def test_masked_weights_stay_zero_and_optimizer_state_stays_clean(make_optimizer):
    model, params, mask = sparse_model()
    enforcer = MaskEnforcer(params, mask)
    enforcer.apply_to_weights()
    optimizer = make_optimizer(model.parameters())
    train_steps(model, optimizer, enforcer)
    for name, weight in params.items():
        pruned = ~mask[name]
        assert torch.count_nonzero(weight.detach()[pruned]) == 0
        assert torch.count_nonzero(weight.detach()[mask[name]]) == int(mask[name].sum())  # survivors still train
        state = optimizer.state[weight]
        buffer = state.get("momentum_buffer", state.get("exp_avg"))
        assert torch.count_nonzero(buffer[pruned]) == 0  # gradients were masked before the step


def test_without_enforcement_momentum_and_decay_regrow_pruned_weights():
    """The failure the enforcer prevents: zeroing once is not enough."""
    model, params, mask = sparse_model()
    MaskEnforcer(params, mask).apply_to_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train_steps(model, optimizer, enforcer=None)
    regrown = sum(int(torch.count_nonzero(w.detach()[~mask[n]])) for n, w in params.items())
    assert regrown > 0


def test_dense_layers_cost_nothing_and_masks_follow_weight_layout():
    conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    linear = nn.Linear(4, 4)
    params = {"conv.weight": conv.weight, "linear.weight": linear.weight}
    mask = Mask(
        {"conv.weight": torch.rand(conv.weight.shape) > 0.5, "linear.weight": torch.ones(4, 4, dtype=torch.bool)}
    )
    enforcer = MaskEnforcer(params, mask)
    assert enforcer._params == [conv.weight]  # the dense layer is skipped
    factor = enforcer._factors[0]
    assert factor.dtype == conv.weight.dtype and factor.stride() == conv.weight.stride()
    enforcer.apply_to_weights()
    assert torch.count_nonzero(conv.weight.detach()[~mask["conv.weight"]]) == 0
    assert not MaskEnforcer(params, Mask.ones_like(params)).active


def test_mask_for_unknown_tensor_is_rejected():
    linear = nn.Linear(2, 2)
    with pytest.raises(KeyError):
        MaskEnforcer({"w": linear.weight}, Mask({"v": torch.ones(2, 2, dtype=torch.bool)}))
