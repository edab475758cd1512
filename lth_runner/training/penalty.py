"""The growing L2 penalty ``alpha(t) * ||w_S||^2`` of the regularized methods, applied to the gradients.

Rather than adding a loss term (an extra autograd graph over every weight), the hook adds its gradient,
``gradient_scale * alpha * w`` on the penalised set ``S``, in one fused ``_foreach`` call before the optimizer step.
With the default ``gradient_scale = 2`` this is exactly the derivative of ``alpha * ||w_S||^2`` (seed 000,
Algorithm 1, line 9). Codes that add ``alpha * w`` (DLTH's reference implementation) correspond to
``gradient_scale = 1``, that is, to a penalty of ``alpha / 2 * ||w_S||^2``. ``alpha`` depends only on the step, so a
resumed run applies exactly the same penalty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lth_runner.sparse.laws import penalty_coefficient
from lth_runner.sparse.mask import Mask


class GrowingPenalty:
    """Hook: ``grad += scale * alpha(phi) * w`` on the selected weights, ``alpha`` rising along ``law``.

    ``phi`` is the number of epochs since ``start_step`` plus ``offset_epochs`` (fractional within an epoch when
    ``granularity`` is ``iteration``); the law reaches ``ceiling`` at ``phi = epochs`` and stays there.
    ``selection`` (a mask, True = penalised) restricts the penalty; None penalises every given weight.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        *,
        law: str,
        ceiling: float,
        epochs: float,
        start_step: int,
        steps_per_epoch: int,
        selection: Mask | None = None,
        granularity: str = "iteration",
        gradient_scale: float = 2.0,
        offset_epochs: float = 0.0,
    ) -> None:
        self.law, self.ceiling, self.epochs = law, ceiling, epochs
        self.start_step, self.steps_per_epoch, self.offset_epochs = start_step, steps_per_epoch, offset_epochs
        self.granularity, self.gradient_scale = granularity, gradient_scale
        names = [n for n in params if selection is None or bool(selection[n].any())]
        self._params = [params[n] for n in names]
        self._weights = [params[n].detach() for n in names]
        self._factors = None
        if selection is not None:
            self._factors = []
            for name in names:
                factor = torch.empty_like(params[name], memory_format=torch.preserve_format)
                factor.copy_(selection[name].to(factor.device))
                self._factors.append(factor)

    def phi(self, step: int) -> float:
        epochs = (step - self.start_step) / self.steps_per_epoch + self.offset_epochs
        return math.floor(epochs + 1e-9) if self.granularity == "epoch" else epochs

    def coefficient(self, step: int) -> float:
        return penalty_coefficient(self.law, self.phi(step), self.epochs, self.ceiling)

    def before_step(self, trainer: Any) -> None:
        alpha = self.coefficient(trainer.step)
        if alpha == 0.0 or not self._params:
            return
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):
            keep = [i for i, g in enumerate(grads) if g is not None]
            grads = [grads[i] for i in keep]
            weights = [self._weights[i] for i in keep]
            factors = [self._factors[i] for i in keep] if self._factors is not None else None
        else:
            weights, factors = self._weights, self._factors
        if factors is None:
            torch._foreach_add_(grads, weights, alpha=self.gradient_scale * alpha)
        else:
            torch._foreach_addcmul_(grads, weights, factors, value=self.gradient_scale * alpha)

    def log_fields(self, trainer: Any) -> dict[str, Any]:
        return {"penalty": self.coefficient(trainer.step)}
