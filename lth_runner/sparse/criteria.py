"""Pruning criteria: functions from weights (and, for data-driven criteria, a model and batches) to scores.

Higher score = more important = kept. The built-ins are declared in :mod:`lth_runner.catalog`; more criteria
(SNIP, GraSP, ...) register the same way::

    @CRITERIA.register("snip")
    def snip(weights: Mapping[str, Tensor], context: ScoreContext) -> dict[str, Tensor]: ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lth_runner.catalog import CRITERIA
from lth_runner.errors import UserError

Scores = dict[str, torch.Tensor]


@dataclass
class ScoreContext:
    """What a criterion may use besides the weights: a seed for random draws, the model, training batches (an
    iterable of ``(x, y)`` that can be iterated afresh), and options (``sparsity.criterion_batches``,
    ``grasp_samples_per_class``, ``grasp_temperature``)."""

    seed: int = 0
    model: torch.nn.Module | None = None
    batches: Iterable[Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def magnitude(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """|w| (Han et al. 2015; Frankle & Carbin 2019): prune the smallest-magnitude weights."""
    return {name: w.detach().abs() for name, w in weights.items()}


def large_final(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """Keep the largest final weights, ``|w_T|``: magnitude pruning under the name of Zhou et al. 2019
    ("Deconstructing Lottery Tickets"), which Sakamoto & Sato (paper 002, Table 2) compare with ``small_final``."""
    return magnitude(weights, context)


def small_final(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """Keep the smallest final weights: score ``-|w_T|`` (Zhou et al. 2019; paper 002, Table 2), the control that
    shows large weights carry the trained function (its train accuracy collapses after pruning)."""
    return {name: -w.detach().abs() for name, w in weights.items()}


def random(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """Uniform random scores, seeded: random pruning as a control."""
    generator = torch.Generator().manual_seed((context or ScoreContext()).seed)
    return {name: torch.rand(w.shape, generator=generator).to(w.device) for name, w in weights.items()}


def score(name: str, weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    return CRITERIA.get(name)(weights, context or ScoreContext())


# ------------------------------------------------------------------------------------- data-driven criteria
def snip(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """SNIP connection sensitivity (Lee et al. 2019, Eq. 6): ``|dL/dc * w| = |g * w|`` on a mini-batch of the
    training split (``sparsity.criterion_batches`` batches, gradients summed; the normalisation by the sum does not
    change the ranking). The reference (mil-ad/snip) re-initialises with Xavier and uses nll_loss: neither here,
    the weights given are scored as they are with the training loss."""
    context = _data_context(context, "snip")
    count = int(context.options.get("criterion_batches", 1))
    grads = None
    for index, (x, y) in enumerate(context.batches):
        if index == count:
            break
        step = _gradients(context.model, weights, x, y)
        grads = step if grads is None else [a + b for a, b in zip(grads, step)]
    if grads is None:
        raise UserError("method.criterion=snip: the training split yielded no batch")
    return {name: (g * w.detach()).abs() for (name, w), g in zip(weights.items(), grads)}


def grasp(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """GraSP (Wang et al. 2020, Eq. 8): ``S(-w) = -w * Hg`` is the score whose largest entries are removed, so the
    keep-score returned is ``w * Hg`` (higher is kept). As alecwangcq/GraSP: ``grasp_samples_per_class`` examples
    of every class from the training split, in two halves; ``g`` the summed gradients of the cross-entropy of
    ``logits / T`` (``grasp_temperature``, 200) over the halves, ``Hg`` by double back-propagation of ``g . grad``.
    Lottery Jackpots' text ("remove the low-scored weights" of ``-w * Hg``) contradicts the GraSP code; this follows
    the code and the GraSP paper."""
    context = _data_context(context, "grasp")
    per_class = int(context.options.get("grasp_samples_per_class", 10))
    temperature = float(context.options.get("grasp_temperature", 200.0))
    x, y = _balanced_sample(context.batches, per_class, context.options.get("num_classes"))
    halves = [(x[: len(x) // 2], y[: len(y) // 2]), (x[len(x) // 2 :], y[len(y) // 2 :])]
    names = list(weights)
    g = None
    for hx, hy in halves:
        step = _gradients(context.model, weights, hx, hy, temperature=temperature)
        g = step if g is None else [a + b for a, b in zip(g, step)]
    assert g is not None
    leaves = {n: weights[n].detach().clone().requires_grad_(True) for n in names}
    buffers = _buffer_copies(context.model)
    z = 0.0
    model = context.model
    was_training = model.training
    model.train()
    try:
        for hx, hy in halves:
            logits = functional_call(model, {**buffers, **leaves}, (hx,), strict=False) / temperature
            grad_f = torch.autograd.grad(F.cross_entropy(logits, hy), list(leaves.values()), create_graph=True)
            z = z + sum((gi.detach() * fi).sum() for gi, fi in zip(g, grad_f))
        hg = torch.autograd.grad(z, list(leaves.values()))
    finally:
        model.train(was_training)
    return {n: (weights[n].detach() * h).detach() for n, h in zip(names, hg)}


def _data_context(context: ScoreContext | None, name: str) -> ScoreContext:
    if context is None or context.model is None or context.batches is None:
        raise UserError(
            f"method.criterion={name} needs the model and training batches; this method scores weights only"
        )
    return context


def _buffer_copies(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the buffers, so that scoring in training mode leaves the running statistics untouched."""
    return {n: b.clone() for n, b in model.named_buffers()}


def _gradients(
    model: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 1.0,
) -> list[torch.Tensor]:
    """Gradients of the training loss with respect to ``weights`` (substituted into ``model``; its other parameters
    and a copy of its buffers as they are), the model in training mode as during training."""
    leaves = {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}
    was_training = model.training
    model.train()
    try:
        logits = functional_call(model, {**_buffer_copies(model), **leaves}, (x,), strict=False) / temperature
        return list(torch.autograd.grad(F.cross_entropy(logits, y), list(leaves.values())))
    finally:
        model.train(was_training)


def _balanced_sample(
    batches: Iterable[Any], per_class: int, num_classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of every class, in the order the batches give them (GraSP_fetch_data); without
    ``num_classes`` the whole pass is read to find every class."""
    xs: dict[int, list[torch.Tensor]] = {}
    for x, y in batches:
        for xi, yi in zip(x, y.tolist()):
            bucket = xs.setdefault(yi, [])
            if len(bucket) < per_class:
                bucket.append(xi.clone())  # a view would keep the whole batch alive
        if num_classes is not None and len(xs) == num_classes and all(len(b) >= per_class for b in xs.values()):
            break
    if not xs:
        raise UserError("method.criterion=grasp: the training split yielded no batch")
    classes = sorted(xs)
    # interleaved by class so that each half holds about half of every class
    order = [(c, i) for i in range(per_class) for c in classes if i < len(xs[c])]
    x = torch.stack([xs[c][i] for c, i in order])
    y = torch.tensor([c for c, _ in order], device=x.device)
    return x, y
