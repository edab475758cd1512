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
        self._factors: list[torch.Tensor] = []
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: Mask) -> None:
        missing = [name for name in mask if name not in self.params]
        if missing:
            raise KeyError(f"mask has tensors the model does not: {missing[:3]}")
        self.mask = mask
        self._params, self._factors = [], []
        for name, keep in mask.items():
            param = self.params[name]
            if bool(keep.all()):
                continue  # dense layers need no work
            factor = torch.empty_like(param, memory_format=torch.preserve_format)
            factor.copy_(keep.to(param.device))
            self._params.append(param)
            self._factors.append(factor)

    @property
    def active(self) -> bool:
        return bool(self._params)

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self._params:
            torch._foreach_mul_(self._params, self._factors)

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        if not self._params:
            return
        pairs = [(p.grad, f) for p, f in zip(self._params, self._factors) if p.grad is not None]
        if pairs:
            grads, factors = zip(*pairs)
            torch._foreach_mul_(list(grads), list(factors))
