"""Sharpness-aware minimisation restricted to the mask (Foret et al. 2021, "Sharpness-Aware Minimization for
Efficiently Improving Generalization", Alg. 1; used on tickets in paper 002, Sakamoto & Sato, Sec. 3.2).

With the step's batch: ``g = m * grad L(theta)``; ``e = rho * g / ||g||_2`` (one global norm over every perturbed
entry: pruned entries are zero in ``g``, so they neither move nor count); a second forward and backward of the same
batch at ``theta + e``; ``theta`` restored exactly; the optimizer steps with the gradient taken at ``theta + e``.
Every trainable parameter is perturbed (biases and BatchNorm's affine too, as in Foret et al.), pruned weights never.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lth_runner.sparse.enforce import MaskEnforcer


class SAM:
    """Hook (before every other ``before_step`` hook): replaces the loss gradient by the one at ``theta + e``.

    It runs first so that everything else acting on gradients (mask enforcement, penalties, clipping) acts on the
    gradient the step uses, exactly as it would on a plain one. ``update_bn=False`` keeps BatchNorm's running
    statistics as the first pass left them (the second pass is a probe, not more data); ``True`` lets it update
    them a second time. The loss the trainer reports is the first pass's, ``L(theta)``.
    """

    def __init__(
        self, model: nn.Module, *, rho: float, enforcer: MaskEnforcer | None = None, update_bn: bool = False
    ) -> None:
        self.model, self.rho, self.enforcer, self.update_bn = model, rho, enforcer, update_bn
        self._batch_norms = [
            m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.record = False  # keep the last step's (parameter, e) pairs in ``perturbation`` (for inspection)
        self.perturbation: list[tuple[nn.Parameter, torch.Tensor]] = []

    def before_step(self, trainer: Any) -> None:
        x, y = trainer.batch
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return
        # The first pass's gradients are discarded by the second backward, so they become e in place.
        grads = [p.grad for p in params]
        factors = self.enforcer.factors() if self.enforcer is not None else {}
        masked = [(g, factors[id(p)]) for g, p in zip(grads, params) if id(p) in factors]
        if masked:
            torch._foreach_mul_([g for g, _ in masked], [f for _, f in masked])
        norm = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))
        torch._foreach_mul_(grads, self.rho / (norm + 1e-12))  # a tensor scale: no device sync
        weights = [p.detach() for p in params]
        saved = [w.clone() for w in weights]  # restored by copy: theta + e - e need not be theta in floating point
        torch._foreach_add_(weights, grads)
        statistics = None if self.update_bn else [_bn_buffers(m) for m in self._batch_norms]
        trainer.loss_and_backward(x, y)
        if statistics is not None:
            for module, buffers in zip(self._batch_norms, statistics):
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)
        torch._foreach_copy_(weights, saved)
        if self.record:
            self.perturbation = list(zip(params, grads))


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: getattr(module, name).clone()
        for name in ("running_mean", "running_var", "num_batches_tracked")
        if getattr(module, name, None) is not None
    }
