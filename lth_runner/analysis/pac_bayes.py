"""PAC-Bayes bounds for a ticket (paper 002, Sakamoto & Sato, Sec. 4.2 and App. B.7).

**Spike-and-slab** (Eqs. 2-5): prior ``P_i = (1 - l_p) delta_0 + l_p N(theta_init_i, s_p^2)``, posterior
``Q_i = (1 - l_q,i) delta_0 + l_q,i N(theta_bar_i, s_q^2)``, with ``l_p`` the target density (1 - target sparsity,
known before training) and ``l_q,i`` the mask (0 or 1). Its KL (Eq. 3 with Eq. 5) is, over the prunable entries,

    sum_unpruned [log(s_p/s_q) + (s_q^2 + (theta_bar - theta_init)^2) / (2 s_p^2) - 1/2 - log l_p]
    + sum_pruned [-log(1 - l_p)].

The paper writes sigma for "a variance" but uses sigma^2 as one in Eq. 3: sigma is read as a standard deviation.
Parameters that are never pruned (biases, BatchNorm) are learned too, so they cannot be a point mass of the
posterior: they get the Gaussian part only (prior N(theta_init, s_p^2), posterior N(theta_bar, s_q^2), l = 1).

**Zero-mean Gaussian** (the comparison of Fig. 4, Sec. A): prior ``N(0, s_p^2 I)`` and posterior
``N(theta_bar, s_q^2 I)`` on every coordinate, pruned ones included (they are 0 with noise around them):
``KL = sum [log(s_p/s_q) + (s_q^2 + theta_bar^2) / (2 s_p^2) - 1/2]``, which is ``||theta||^2 / (2 sigma^2)`` when
``s_q = s_p``.

**The bound** (Eq. 16, the variational KL bound of Dziugaite et al.): with probability ``1 - delta``,
``L_D(Q) <= min(L_S(Q) + B + sqrt(B (B + 2 L_S(Q))), L_S(Q) + sqrt(B/2))``, ``B = (KL + log(2 sqrt(n)/delta)) / n``
(Eq. 17), ``L`` the 0-1 error. The posterior scale ``s_q`` is free (the bound holds for every posterior at once);
the prior scale ``s_p`` is chosen from a grid fixed in advance and paid for by a union bound (``delta / |grid|``
each). ``L_S(Q)`` is estimated by Monte Carlo over ``draws`` noise samples (an estimate, not itself bounded: the
sample-convergence term of Dziugaite & Roy 2017 is not added).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

DEFAULT_SIGMA_Q = tuple(10.0**e for e in (-4, -3.5, -3, -2.5, -2, -1.75, -1.5, -1.25, -1, -0.75, -0.5))
DEFAULT_SIGMA_P = tuple(10.0**e for e in (-3, -2.5, -2, -1.5, -1, -0.5))


def bernoulli_kl(q: float, p: float) -> float:
    """Eq. 4: ``kl[q || p]`` of two Bernoulli (mixture) weights, with ``0 log 0 = 0``."""
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def spike_and_slab_kl(
    trained: Mapping[str, torch.Tensor],
    init: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    sigma_q: float,
    sigma_p: float,
    density: float,
    others: Sequence[str] = (),
) -> float:
    """Eq. 3 with Eq. 5 over the masked tensors ``masks`` (plus the Gaussian part over the unmasked ``others``)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density}: the prior's mixture weight must be in (0, 1]")
    gauss_const = math.log(sigma_p / sigma_q) + sigma_q**2 / (2 * sigma_p**2) - 0.5
    total = 0.0
    for name, mask in masks.items():
        kept = int(mask.sum())
        squared = float(((trained[name] - init[name]).double() * mask).pow(2).sum())
        total += kept * (gauss_const + bernoulli_kl(1.0, density)) + squared / (2 * sigma_p**2)
        if kept < mask.numel():
            total += (mask.numel() - kept) * bernoulli_kl(0.0, density)
    for name in others:
        squared = float((trained[name] - init[name]).double().pow(2).sum())
        total += trained[name].numel() * gauss_const + squared / (2 * sigma_p**2)
    return total


def gaussian_kl(trained: Mapping[str, torch.Tensor], *, sigma_q: float, sigma_p: float) -> float:
    """KL of ``N(theta_bar, s_q^2 I)`` from ``N(0, s_p^2 I)`` over every coordinate of ``trained``."""
    count = sum(t.numel() for t in trained.values())
    squared = sum(float(t.double().pow(2).sum()) for t in trained.values())
    return count * (math.log(sigma_p / sigma_q) + sigma_q**2 / (2 * sigma_p**2) - 0.5) + squared / (2 * sigma_p**2)


def variational_kl_bound(train_error: float, kl: float, n: int, delta: float) -> tuple[float, float]:
    """Eqs. 16-17: the bound and ``B``."""
    b = (kl + math.log(2 * math.sqrt(n) / delta)) / n
    first = train_error + b + math.sqrt(b * (b + 2 * train_error))
    second = train_error + math.sqrt(b / 2)
    return min(first, second), b


@dataclass
class Bound:
    """The optimised bound and what it is made of."""

    bound: float
    kl: float
    b: float
    train_error: float
    sigma_q: float
    sigma_p: float
    n: int
    delta: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def optimise(
    errors: Mapping[float, float],
    kl_of: Callable[[float, float], float],
    *,
    n: int,
    delta: float,
    sigma_p_grid: Sequence[float] = DEFAULT_SIGMA_P,
) -> Bound:
    """The smallest bound over the posterior scales of ``errors`` (``{s_q: L_S(Q)}``) and the prior grid, the
    grid paid for by a union bound."""
    each = delta / len(sigma_p_grid)
    best: Bound | None = None
    for sigma_q, error in errors.items():
        for sigma_p in sigma_p_grid:
            kl = kl_of(sigma_q, sigma_p)
            value, b = variational_kl_bound(error, kl, n, each)
            if best is None or value < best.bound:
                best = Bound(value, kl, b, error, sigma_q, sigma_p, n, delta)
    assert best is not None
    return best


@torch.no_grad()
def posterior_error(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor | None],
    sigma: float,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    draws: int,
    generator: torch.Generator,
) -> float:
    """Monte-Carlo 0-1 error of the posterior: ``theta_bar + sigma * eps`` with ``eps ~ N(0, I)`` on the slab
    coordinates (``masks[name]``; None: the whole tensor), averaged over ``draws``. Weights restored exactly."""
    tensors = {n: params[n] for n in masks}
    original = {n: t.detach().clone() for n, t in tensors.items()}
    count = sum(int(y.numel()) for _, y in batches)
    was_training = model.training
    model.eval()
    errors = []
    try:
        for _ in range(draws):
            for name, tensor in tensors.items():
                noise = torch.randn(tensor.shape, generator=generator).to(tensor) * sigma
                if masks[name] is not None:
                    noise = noise * masks[name]
                tensor.copy_(original[name] + noise)
            wrong = sum(float((model(x).argmax(1) != y).sum()) for x, y in batches)
            errors.append(wrong / count)
    finally:
        for name, tensor in tensors.items():
            tensor.copy_(original[name])
        model.train(was_training)
    return sum(errors) / len(errors)
