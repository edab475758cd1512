"""Strong lottery tickets with epsilon-perturbation (paper 003; Xiong, Liao & Kyrillidis, AISTATS 2023, Alg. 1).

1. ``dW = 0``; for ``t < T``: ``W_hat = dW - alpha_t * grad L(W_t)``, ``dW = clamp(W_hat, -eps, eps)`` (the
   projection onto the l-infinity ball), ``W_{t+1} = W_0 + dW`` (stage ``pgd/dense``: SGD without momentum or
   weight decay, each step followed by the projection);
2. for every sparsity ``s`` of ``method.sparsities``: edge-popup on the frozen ``W_T`` (stage ``popup/sNN``, mask
   ``masks/sNN.pt``; :func:`lth_runner.methods.mask_search.popup`);
3. keep the ``(l, M, s)`` with the smallest validation loss (``method.select_by``; the test split is never used to
   choose): ``masks/best.pt`` and the run's headline.

Choices where the paper leaves room (docs/methods.md): ``eps`` is absolute by default (the slides' table), or
relative to each layer's initial standard deviation (``eps_mode=relative_std``); PGD moves the prunable weights
(``perturb=all``: every parameter) for ``pgd_epochs`` epochs at ``pgd_lr``; ``eps = 0`` skips PGD (the network is its
initialisation, plain edge-popup). The summary's ``details.slt.grid`` holds one row per sparsity, and the row
``s = 0`` is the perturbed network unpruned; sweeping ``method.eps`` gives the paper's sparsity x epsilon table
(``lth-run-report`` draws it as a heatmap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lth_runner.config.schema import SLTEpsConfig
from lth_runner.methods.controls import controls_from_init
from lth_runner.methods.mask_search import popup, searched_parameters
from lth_runner.session import RunContext
from lth_runner.sparse import MaskEnforcer, unwrap
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import Stage, StageResult

PGD_KEY = "pgd/dense"


class ProjectToBox:
    """Trainer hook: after every optimizer step, ``W = W_0 + clamp(W - W_0, -eps, eps)`` per tensor."""

    def __init__(
        self, params: Mapping[str, nn.Parameter], origin: Mapping[str, torch.Tensor], eps: Mapping[str, float]
    ):
        self.params, self.origin, self.eps = params, origin, eps

    @torch.no_grad()
    def after_step(self, trainer: Any) -> None:
        for name, p in self.params.items():
            p.copy_(self.origin[name] + (p - self.origin[name]).clamp(-self.eps[name], self.eps[name]))


def radii(origin: Mapping[str, torch.Tensor], eps: float, mode: str) -> dict[str, float]:
    """The ball's radius per tensor: ``eps``, or ``eps`` times the tensor's initial standard deviation."""
    if mode == "absolute":
        return {n: eps for n in origin}
    return {n: eps * float(t.float().std()) if t.numel() > 1 else eps for n, t in origin.items()}


def sparsity_label(s: float) -> str:
    return f"s{round(100 * s):02d}"


def _selection_value(result: StageResult, select_by: str) -> float:
    """The figure that ranks a sparsity's mask: the last epoch's, since the saved mask is the last epoch's."""
    if select_by == "val_loss":
        return result.final_val_loss
    if select_by == "val_acc":
        return -result.final_val_acc
    return result.final_train_loss


def slt_eps(run: RunContext) -> Summary:
    """PGD inside the epsilon box, then edge-popup per sparsity; the best mask by validation loss."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, SLTEpsConfig)
    model = run.new_model("init")
    params = searched_parameters(run, model)
    total = sum(p.numel() for p in params.values())
    run.log_start(total, densities=[1.0 - s for s in method.sparsities], eps=method.eps)

    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}  # the controls' start
    moved = params if method.perturb == "prunable" else dict(unwrap(model).named_parameters())
    origin = {n: p.detach().clone() for n, p in moved.items()}
    eps = radii(origin, method.eps, method.eps_mode)
    results: list[StageResult] = []
    if method.eps > 0:
        pgd_optim = dataclasses.replace(
            cfg.optim, lr=method.pgd_lr or cfg.optim.lr, momentum=method.pgd_momentum, weight_decay=0.0
        )
        trainable = {name: p.requires_grad for name, p in unwrap(model).named_parameters()}
        for name, p in unwrap(model).named_parameters():  # only what PGD moves trains
            p.requires_grad_(name in moved)
        pgd = run.train(
            Stage(PGD_KEY, 0, "dense", method.pgd_epochs or cfg.trainer.epochs),
            model,
            None,
            [ProjectToBox(moved, origin, eps)],
            keep_weights=True,
            optim=pgd_optim,
        )
        results.append(pgd)
        for name, p in unwrap(model).named_parameters():  # the controls train every parameter again
            p.requires_grad_(trainable[name])
    else:
        pgd = run.evaluate(model, "pgd/evaluate", 0)
    perturbed = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    distance = max(float((perturbed[n] - origin[n]).abs().max()) for n in origin) if origin else 0.0
    rounds = [round_summary(0, total, total, pgd)]
    grid = [_row(0.0, pgd)]

    found: list[tuple[float, StageResult, Any]] = []
    for index, s in enumerate(method.sparsities, start=1):
        unwrap(model).load_state_dict(perturbed)  # every search starts from W_T (BN statistics included)
        label = sparsity_label(s)
        result, mask, wrapper, section = popup(
            run, model, params, 1.0 - s, key=f"popup/{label}", round_index=index, mask_name=label, rank_by="abs",
            epochs=method.search_epochs or cfg.trainer.epochs,
        )  # fmt: skip
        wrapper.release()
        results.append(result)
        rounds.append(round_summary(index, mask.num_kept(), total, result))
        grid.append({**_row(s, result), "overlap_with_magnitude": section["overlap_with_magnitude"]["end"]})
        found.append((s, result, mask))
    best_s, best, best_mask = min(found, key=lambda item: _selection_value(item[1], method.select_by))
    run.mask("best", lambda: best_mask)
    best_round = method.sparsities.index(best_s) + 1
    controls = controls_from_init(
        run, round_index=best_round, mask=best_mask, model=model, enforcer=MaskEnforcer(params, best_mask),
        init_state=init_state, results=results,
    )  # fmt: skip
    if controls:
        rounds[best_round] = round_summary(best_round, best_mask.num_kept(), total, best, controls)
    details = {
        "slt": {
            "eps": method.eps,
            "eps_mode": method.eps_mode,
            "max_perturbation": distance,
            "select_by": method.select_by,
            "best_sparsity": best_s,
            "grid": grid,
        }
    }
    return run.write_summary(total, results=results, final=best, kept=best_mask.num_kept(), round_index=best_round,
                             rounds=rounds, controls=controls, details=details, complete=True)  # fmt: skip


def _row(s: float, result: StageResult) -> dict[str, Any]:
    return {
        "sparsity": s,
        "val_loss": result.final_val_loss,  # of the last epoch, whose mask is saved (and selected on)
        "val_acc": result.final_val_acc,
        "test_acc": result.test_acc,
        "train_loss": result.final_train_loss,
    }
