"""Optimal Brain Damage saliency (LeCun, Denker & Solla, "Optimal Brain Damage", NeurIPS 1989).

OBD expands the change of the training loss ``L`` when weights are perturbed by ``dw`` to second order (Eq. 2),
drops the first-order term (the network is trained to a minimum, where ``g = 0``), the off-diagonal terms (the
"diagonal approximation") and the cubic rest, so deleting weight ``i`` (``dw_i = -w_i``) costs

    s_i = h_ii * w_i^2 / 2                                                                  (Eq. 5)

and the weights with the smallest saliency are deleted first (all parameters of the network sorted together:
the criterion is meant for ``scope=global``). Higher saliency = kept.

``h_ii``, the diagonal of the Hessian of the mean cross-entropy over the examples, by ``obd_hessian``:

- ``fisher`` (default): the empirical Fisher ``mean_n (dl_n / dw_i)^2`` of per-example gradients (``torch.func``
  ``vmap(grad(...))`` over ``functional_call``, in chunks bounded by :data:`CHUNK_FLOATS`). OBD computes ``h_ii``
  by a backward pass of second derivatives that drops the terms with the second derivative of the units (its
  Eq. 7-8, the Levenberg-Marquardt/Gauss-Newton approximation), so OBD's own diagonal is positive; the empirical
  Fisher is the other standard positive approximation of the Gauss-Newton matrix (equal to it in expectation when
  the model's predictive distribution matches the labels), cheap with per-example gradients and never negative.
- ``hutchinson``: ``diag(H) = E_z[z * (H z)]`` over Rademacher probes ``z`` (Bekas, Kokiopoulou & Saad 2007), the
  products ``H z`` exact by double back-propagation of the loss averaged over the examples. The estimate of a
  coordinate can be negative (the Hessian is indefinite away from a minimum, and the estimate is noisy); it is used
  as is, not clamped: a negative ``h_ii`` means the quadratic model predicts that removing weight ``i`` lowers the
  loss, so pruning it first is what Eq. 5 says, whereas clamping to zero would tie all such weights with the
  already-zero ones and leave their order to tie-breaking.

Both use the model in evaluation mode (BatchNorm with its running statistics, no dropout): the saliency is the
curvature of the function the trained network computes, and per-example gradients need a batch-independent
forward. Examples are the first ``sparsity.criterion_batches`` batches of the seeded training pass; with
``obd_samples`` set, the Fisher uses at most that many of their examples and Hutchinson that many probes (default
:data:`DEFAULT_PROBES`). The probes are drawn from a generator seeded by the context seed (the same probes for every
batch, so the result does not depend on how the examples are batched), so the scores are deterministic.

:class:`lth_runner.analysis.hessian.HessianOperator` differentiates the model's own parameters; a criterion scores
the weights it is given (possibly not the model's current ones), so the products here substitute them with
``functional_call`` as SNIP and GraSP do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lth_runner.errors import UserError
from lth_runner.sparse.criteria import ScoreContext, Scores, _data_context

ESTIMATORS = ("fisher", "hutchinson")
DEFAULT_PROBES = 100  # PyHessian's iteration cap for its Hutchinson trace
CHUNK_FLOATS = 2**26  # per-example gradients held at once (256 MiB in float32): bounds the Fisher's memory


def obd_saliency(weights: Mapping[str, torch.Tensor], hessian_diagonal: Mapping[str, torch.Tensor]) -> Scores:
    """OBD Eq. 5: ``s_i = h_ii * w_i^2 / 2``."""
    return {n: (hessian_diagonal[n] * weights[n].detach() ** 2 / 2).detach() for n in weights}


def obd(weights: Mapping[str, torch.Tensor], context: ScoreContext | None = None) -> Scores:
    """The ``obd`` criterion: OBD saliency with the Hessian diagonal of ``options["obd_hessian"]``."""
    context = _data_context(context, "obd")
    options = context.options
    estimator = options.get("obd_hessian") or "fisher"
    samples = options.get("obd_samples")
    batches = _first_batches(context.batches, int(options.get("criterion_batches", 1)))
    if estimator == "fisher":
        diagonal = fisher_diagonal(context.model, weights, batches, max_examples=samples)
    elif estimator == "hutchinson":
        probes = DEFAULT_PROBES if samples is None else int(samples)
        diagonal = hutchinson_diagonal(context.model, weights, batches, probes=probes, seed=context.seed)
    else:
        raise UserError(f"sparsity.obd_hessian={estimator!r} is not accepted: expected one of: {', '.join(ESTIMATORS)}")
    return obd_saliency(weights, diagonal)


def fisher_diagonal(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_examples: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal ``mean_n g_n^2`` of the per-example cross-entropy gradients ``g_n`` with respect
    to ``weights`` (substituted into ``model``, in evaluation mode), over at most ``max_examples`` examples."""
    leaves = {n: w.detach() for n, w in weights.items()}
    buffers = {n: b for n, b in model.named_buffers()}
    size = sum(w.numel() for w in leaves.values())
    chunk = chunk_size or max(1, min(256, CHUNK_FLOATS // max(size, 1)))

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**buffers, **params}, (x.unsqueeze(0),), strict=False)
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(w) for n, w in leaves.items()}
    count = 0
    with _eval_mode(model):
        for x, y in batches:
            if max_examples is not None:
                x, y = x[: max_examples - count], y[: max_examples - count]
            for start in range(0, len(y), chunk):
                grads = per_example(leaves, x[start : start + chunk], y[start : start + chunk])
                for n, g in grads.items():
                    total[n].add_((g.detach() ** 2).sum(dim=0))
            count += len(y)
            if max_examples is not None and count >= max_examples:
                break
    if count == 0:
        raise UserError("method.criterion=obd: the training split yielded no batch")
    return {n: t / count for n, t in total.items()}


def hutchinson_diagonal(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Hutchinson-Bekas estimate ``mean_k z_k * (H z_k)`` of the diagonal of the Hessian of the mean cross-entropy
    over the examples of ``batches`` (batch means weighted by size), ``probes`` Rademacher vectors ``z_k`` drawn
    from ``seed``."""
    names = list(weights)
    buffers = {n: b for n, b in model.named_buffers()}
    batches = list(batches)
    count = sum(int(y.numel()) for _, y in batches)
    if count == 0:
        raise UserError("method.criterion=obd: the training split yielded no batch")
    total = {n: torch.zeros_like(weights[n]).detach() for n in names}
    with _eval_mode(model):
        for x, y in batches:
            leaves = {n: weights[n].detach().clone().requires_grad_(True) for n in names}
            logits = functional_call(model, {**buffers, **leaves}, (x,), strict=False)
            grads = torch.autograd.grad(F.cross_entropy(logits, y), list(leaves.values()), create_graph=True)
            draw = torch.Generator().manual_seed(seed)  # the same probes for every batch
            scale = y.numel() / count / probes
            for _ in range(probes):
                z = [(torch.randint(0, 2, w.shape, generator=draw) * 2 - 1).to(w) for w in leaves.values()]
                hz = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=z, retain_graph=True)
                for n, zi, hi in zip(names, z, hz):
                    total[n].add_(zi * hi.detach(), alpha=scale)
    return total


def _first_batches(batches: Iterable[Any], count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    taken = []
    for index, batch in enumerate(batches):
        if index == count:
            break
        taken.append((batch[0], batch[1]))
    return taken


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in evaluation mode for the block, its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
