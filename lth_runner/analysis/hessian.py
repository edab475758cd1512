"""Curvature of the training loss restricted to a subnetwork: Hessian-vector products, Hutchinson's trace and the
top eigenpair by power iteration (paper 002, Sakamoto & Sato, Table 1 and Fig. 2, which use PyHessian).

PyHessian (Yao et al. 2020) is GPL-3.0 and unmaintained, so this is written from the definitions, with its
defaults: the model in evaluation mode, the loss averaged over the given examples, at most 100 iterations, stopping
when the running estimate changes by less than ``tol = 1e-3`` relatively. Products are exact (double back-propagation
through ``torch.autograd``), averaged over batches weighted by their size, so the result does not depend on how the
examples are batched.

"Restricted to the mask" (paper 002, Sec. 3.2): every probe and every iterate is multiplied by the mask, so the
trace is that of ``P H P`` with ``P`` the projection onto the unpruned coordinates, and the eigenvector lives in
the subnetwork's parameter space. Coordinates without a mask (biases, BatchNorm) are included whole unless the
caller leaves them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

Vector = list[torch.Tensor]


class HessianOperator:
    """``v -> H v`` for the mean cross-entropy of ``model`` over ``batches`` with respect to ``params``, where
    ``masks[name]`` (a bool tensor, or None for a whole tensor) restricts input and output to the subnetwork."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        params: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor | None] | None = None,
    ) -> None:
        self.model, self.batches = model, list(batches)
        self.names = list(params)
        self.params = [params[n] for n in self.names]
        masks = masks or {}
        self.masks = [None if masks.get(n) is None else masks[n].to(params[n].dtype) for n in self.names]
        self.count = sum(int(y.numel()) for _, y in self.batches)
        self.products = 0

    def project(self, v: Vector) -> Vector:
        return [t if m is None else t * m for t, m in zip(v, self.masks)]

    def dimension(self) -> int:
        """Coordinates of the subspace (unpruned entries plus the unmasked tensors)."""
        return sum(p.numel() if m is None else int(m.sum()) for p, m in zip(self.params, self.masks))

    def __call__(self, v: Vector) -> Vector:
        v = self.project(v)
        total = [torch.zeros_like(p) for p in self.params]
        was_training = self.model.training
        self.model.eval()
        try:
            for x, y in self.batches:
                loss = F.cross_entropy(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                products = torch.autograd.grad(grads, self.params, grad_outputs=v)
                weight = y.numel() / self.count
                for acc, hv in zip(total, products):
                    acc.add_(hv.detach(), alpha=weight)
        finally:
            self.model.train(was_training)
        self.products += 1
        return self.project(total)

    def loss(self) -> float:
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            total = sum(float(F.cross_entropy(self.model(x), y, reduction="sum")) for x, y in self.batches)
            self.model.train(was_training)
        return total / self.count


def dot(a: Vector, b: Vector) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def norm(a: Vector) -> float:
    return math.sqrt(dot(a, a))


@dataclass
class TraceEstimate:
    trace: float
    std_error: float
    iterations: int
    samples: list[float] = field(default_factory=list)


def hutchinson_trace(
    hvp: HessianOperator, *, max_iter: int = 100, tol: float = 1e-3, generator: torch.Generator | None = None
) -> TraceEstimate:
    """Hutchinson's estimator ``tr(H) = E[v^T H v]`` with Rademacher ``v`` (masked to the subspace), stopped when
    the running mean moves by less than ``tol`` relatively (PyHessian's rule) or after ``max_iter`` probes."""
    samples: list[float] = []
    mean = 0.0
    for _ in range(max_iter):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in hvp.params]
        v = hvp.project(v)
        samples.append(dot(v, hvp(v)))
        previous, mean = mean, sum(samples) / len(samples)
        if len(samples) > 1 and abs(mean - previous) / (abs(previous) + 1e-6) < tol:
            break
    spread = (sum((s - mean) ** 2 for s in samples) / (len(samples) - 1)) ** 0.5 if len(samples) > 1 else 0.0
    return TraceEstimate(mean, spread / math.sqrt(len(samples)), len(samples), samples)


@dataclass
class Eigenpair:
    value: float
    vector: Vector
    iterations: int


def top_eigenpair(
    hvp: HessianOperator, *, max_iter: int = 100, tol: float = 1e-3, generator: torch.Generator | None = None
) -> Eigenpair:
    """Power iteration in the subspace: the eigenvalue of largest magnitude (the top one at a minimum, where the
    Hessian is close to positive semi-definite) and its unit eigenvector; stopped when the Rayleigh quotient moves
    by less than ``tol`` relatively."""
    v = hvp.project([torch.randn(p.shape, generator=generator).to(p) for p in hvp.params])
    scale = norm(v) or 1.0
    v = [t / scale for t in v]
    value = None
    iterations = 0
    for iterations in range(1, max_iter + 1):
        hv = hvp(v)
        new = dot(v, hv)
        size = norm(hv)
        if size == 0.0:
            return Eigenpair(0.0, v, iterations)
        v = [t / size for t in hv]
        if value is not None and abs(new - value) / (abs(value) + 1e-6) < tol:
            value = new
            break
        value = new
    return Eigenpair(float(value), v, iterations)


def subnetwork(
    model: nn.Module, masks: Mapping[str, torch.Tensor], subspace: str = "unpruned"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    """The parameters and masks of an analysis subspace: ``unpruned`` (every trainable parameter, the masked ones
    only where kept), ``unpruned_weights`` (the masked tensors' kept entries only) or ``all`` (no restriction, as
    PyHessian on a pruned network would measure)."""
    if subspace not in ("unpruned", "unpruned_weights", "all"):
        raise ValueError(f"subspace={subspace!r}: expected unpruned, unpruned_weights or all")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if subspace == "unpruned_weights":
        params = {n: p for n, p in params.items() if n in masks}
    chosen = {n: (masks.get(n) if subspace != "all" else None) for n in params}
    return params, chosen
