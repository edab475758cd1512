"""Keeping pruned weights at zero during training.

Gradients are masked before the optimizer step (so momentum buffers, Adam moments and gradient clipping never see
pruned entries) and the weights are re-masked after it (so weight decay, momentum carried from before a prune,
or any optimizer quirk cannot regrow them). Both are single fused ``_foreach_mul_`` calls over the layers that are
actually sparse, with masks stored in each weight's dtype and memory format.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lth_runner.sparse.mask import Mask


class MaskEnforcer:
    """Applies a :class:`Mask` to the matching parameters around every optimizer step."""

    def __init__(self, params: Mapping[str, nn.Parameter], mask: Mask | None = None) -> None:
        self.params = dict(params)
        self.mask: Mask | None = None
        self._params: list[nn.Parameter] = []
        self._weights: list[torch.Tensor] = []  # detached views: in-place masking without autograd bookkeeping
        self._factors: list[torch.Tensor] = []
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: Mask) -> None:
        missing = [name for name in mask if name not in self.params]
        if missing:
            raise KeyError(f"mask has tensors the model does not: {missing[:3]}")
        self.mask = mask
        self._params, self._weights, self._factors = [], [], []
        for name, keep in mask.items():
            param = self.params[name]
            if bool(keep.all()):
                continue  # dense layers need no work
            factor = torch.empty_like(param, memory_format=torch.preserve_format)
            factor.copy_(keep.to(param.device))
            self._params.append(param)
            self._weights.append(param.detach())
            self._factors.append(factor)

    @property
    def active(self) -> bool:
        return bool(self._params)

    def factors(self) -> dict[int, torch.Tensor]:
        """``{id(parameter): keep factor}`` of the sparse layers (dense layers have none): for hooks that mask
        tensors of their own (a perturbation, a noise, a penalty's gradient) with the current mask."""
        return {id(param): factor for param, factor in zip(self._params, self._factors)}

    def apply_to_weights(self) -> None:
        if self._weights:
            torch._foreach_mul_(self._weights, self._factors)

    def apply_to_gradients(self) -> None:
        if not self._params:
            return
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):  # a layer unused in this step (rare): mask the gradients that exist
            pairs = [(g, f) for g, f in zip(grads, self._factors) if g is not None]
            grads, factors = [g for g, _ in pairs], [f for _, f in pairs]
            if grads:
                torch._foreach_mul_(grads, factors)
            return
        torch._foreach_mul_(grads, self._factors)
