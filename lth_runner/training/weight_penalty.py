"""Penalties on the unpruned weights (paper 002, Sakamoto & Sato, "Analyzing Lottery Ticket Hypothesis from
PAC-Bayesian Theory Perspective", Eq. 1 and Sec. 3.3), applied to the gradients.

``l2_init``: ``L_S(theta) + lambda * ||m * (theta - theta_init)||^2`` keeps a ticket near where it started, the
centre of the PAC-Bayes prior (the KL term of Eq. 5 grows with ``||theta - theta_init||^2`` on the unpruned
entries); ``l2_norm``: ``L_S(theta) + lambda * ||m * theta||^2`` is the usual weight decay on the same entries, the
control the paper compares it with (Fig. 3). As :class:`~lth_runner.training.penalty.GrowingPenalty` does, the hook
adds the penalty's derivative, ``2 * lambda * m * (theta - ref)``, to the gradients in fused ``_foreach`` calls
rather than building an autograd graph for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lth_runner.sparse.enforce import MaskEnforcer

KINDS = ("l2_init", "l2_norm")


class WeightPenalty:
    """Hook: ``grad += 2 * lambda * m * (theta - ref)`` on ``params`` before the optimizer step.

    ``m`` is the enforcer's current mask (dense without an enforcer, and in round 0). ``ref`` is 0 for ``l2_norm``;
    for ``l2_init`` it is the weights the stage starts from, captured when it starts (and kept in the checkpoint,
    so a resumed stage pulls towards the same point). For IMP rewound to the initialisation, the paper's setting,
    that is ``theta_init`` itself, in the dense round 0 and in every ticket round. With late rewinding the stage
    starts from the rewind point ``theta_k``, so the penalty measures the distance travelled from ``theta_k``:
    the natural centre of a prior built after k steps of training (the data-dependent prior of the PAC-Bayes
    literature), not the random initialisation; a fine-tuning stage pulls towards the weights it fine-tunes.

    ``stages="sparse"`` leaves stages on a dense network (no enforcer, or an all-ones mask) unpenalised.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        *,
        kind: str,
        coefficient: float,
        enforcer: MaskEnforcer | None = None,
        stages: str = "all",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown weight penalty {kind!r}: expected one of {KINDS}")
        self.kind, self.coefficient, self.enforcer, self.stages = kind, coefficient, enforcer, stages
        self._params = list(params.values())
        self._reference: list[torch.Tensor] | None = None

    def on_stage_start(self, trainer: Any) -> None:
        if self.kind == "l2_init":  # after EnforceMask: the masked start, which m * (theta - ref) never tells apart
            self._reference = [p.detach().clone() for p in self._params]

    def before_step(self, trainer: Any) -> None:
        sparse = self.enforcer is not None and self.enforcer.active
        if self.coefficient == 0.0 or (self.stages == "sparse" and not sparse):
            return
        self.add_gradients()

    def add_gradients(self) -> None:
        """``grad += 2 lambda m (theta - ref)`` on every parameter that has a gradient."""
        factors = self.enforcer.factors() if self.enforcer is not None else {}
        keep = [i for i, p in enumerate(self._params) if p.grad is not None]
        if not keep:
            return
        weights = [self._params[i].detach() for i in keep]
        if self.kind == "l2_init":
            assert self._reference is not None, "l2_init needs on_stage_start (or a checkpoint) for its reference"
            deltas = torch._foreach_sub(weights, [self._reference[i] for i in keep])
        else:
            deltas = weights
        scale = 2.0 * self.coefficient
        masked = [(j, factors[id(self._params[i])]) for j, i in enumerate(keep) if id(self._params[i]) in factors]
        dense = [j for j, i in enumerate(keep) if id(self._params[i]) not in factors]
        if masked:
            torch._foreach_addcmul_(
                [self._params[keep[j]].grad for j, _ in masked],
                [deltas[j] for j, _ in masked],
                [f for _, f in masked],
                value=scale,
            )
        if dense:
            torch._foreach_add_([self._params[keep[j]].grad for j in dense], [deltas[j] for j in dense], alpha=scale)

    def log_fields(self, trainer: Any) -> dict[str, Any]:
        return {"weight_penalty": self.value()}

    @torch.no_grad()
    def value(self) -> float:
        """``lambda * ||m (theta - ref)||^2`` now (logged once an epoch: the size of the pull)."""
        factors = self.enforcer.factors() if self.enforcer is not None else {}
        total = 0.0
        for i, param in enumerate(self._params):
            delta = param.detach() if self.kind == "l2_norm" else param.detach() - self._reference[i]
            factor = factors.get(id(param))
            total += float((delta * factor if factor is not None else delta).square().sum())
        return self.coefficient * total

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self._reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reference = state["reference"]
