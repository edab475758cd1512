"""LTH (one-shot) and LTH-Iter (iterative magnitude pruning, IMP).

Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, Sec. 2 ("Identifying winning tickets"):
1. randomly initialise a network f(x; theta_0); 2. train it for j iterations to theta_j; 3. prune p% of the
parameters, creating a mask m; 4. reset the remaining parameters to their values in theta_0. Iterative pruning
repeats 2-4 for n rounds, each pruning p^(1/n)% of the survivors. Late rewinding (Frankle et al., "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020) resets to theta_k, the state after k epochs or
iterations, and resumes the learning-rate schedule at k.

Controls (``method.controls``, :mod:`lth_runner.methods.controls`; F&C Sec. 2, Figs. 3-4) train after every
round (or the last, ``method.control_rounds=last``): ``reinit`` (the ticket's mask on a fresh initialisation, from
step 0) and ``random_prune`` (a random mask with the ticket's per-layer counts, on the rewind-point weights).

Choices where the papers leave room (also in docs/methods.md):
- the per-round schedule comes from the ``sparsity`` group: ``geometric`` (density after round i is
  ``r^(i/rounds)``, UniLTH Sec. 3.1) or ``fixed_fraction`` (remove ``rate`` of the survivors per round, open_lth);
- weights are ranked at the end of training (``prune_from=final``), or at the best validation epoch;
- after late rewinding the optimizer starts fresh (no momentum carried over), as open_lth does;
- ticket and controls of a round see the same data order (common random numbers reduce comparison noise).

``method.record_train_drops`` adds, per round, the training-accuracy drops of Sakamoto & Sato (paper 002, Table 2):
the training accuracy of the trained network the round prunes (the reference), of those weights under the new mask
(after pruning), of the rewind-point weights under it (after rewinding) and of the retrained ticket (after
retraining), each minus the reference's, as fractions (-0.2 = 20 points lost). See :func:`_train_drops`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from lth_runner.config.schema import LTHConfig
from lth_runner.errors import ConfigError, UserError
from lth_runner.methods.controls import ControlStart, train_controls
from lth_runner.session import RunContext
from lth_runner.sparse import (
    CRITERIA,
    Mask,
    MaskEnforcer,
    prune_to_density,
    remaining_fraction,
    round_densities,
)
from lth_runner.sparse.mask import resolve_mask
from lth_runner.sparse.prunable import unwrap
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import Stage, StageResult


class RewindCapture:
    """Hook: save the model state after ``k`` epochs or iterations of dense training (the rewind point); ``module``:
    the network whose state is saved when the trainer trains a wrapper of it (default: what the trainer trains)."""

    def __init__(self, run: RunContext, k: int, unit: str, module: torch.nn.Module | None = None) -> None:
        self.run, self.k, self.unit, self.module = run, k, unit, module

    def _capture(self, trainer: Any) -> None:
        source = self.module if self.module is not None else unwrap(trainer.model)
        state = {name: t.detach().clone() for name, t in source.state_dict().items()}
        self.run.save_state_tensors("rewind", {"step": trainer.step, "model": state})

    def after_step(self, trainer: Any) -> None:
        if self.unit == "iteration" and trainer.step == self.k:
            self._capture(trainer)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.unit == "epoch" and trainer.epoch == self.k:
            self._capture(trainer)


def lth(run: RunContext) -> Summary:
    """One-shot LTH: train, prune straight to the target sparsity, rewind, retrain."""
    return iterative_magnitude_pruning(run, one_shot=True)


def lth_iter(run: RunContext) -> Summary:
    """LTH-Iter / IMP: ``sparsity.rounds`` rounds of train, prune, rewind."""
    return iterative_magnitude_pruning(run, one_shot=False)


def iterative_magnitude_pruning(run: RunContext, *, one_shot: bool) -> Summary:
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, LTHConfig)
    epochs = cfg.trainer.epochs
    _check_rewind(method, epochs, run.data.num_train_batches())
    sparsity = cfg.sparsity
    densities = (
        [remaining_fraction(sparsity.target)]
        if one_shot
        else round_densities(sparsity.target, schedule=sparsity.schedule, rounds=sparsity.rounds, rate=sparsity.rate)
    )
    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    mask = Mask.ones_like(params)
    enforcer = MaskEnforcer(params, mask)
    run.log_start(total, densities=densities)

    given = _given_mask(run, params) if method.mask is not None and run.saved_mask("round_01") is None else None
    if method.mask is not None and given is None:  # resumed: the copy this run saved is the mask it trains
        given = (run.mask_path("round_01"), run.saved_mask("round_01"))
    details: dict[str, Any] = {"planned_densities": densities}
    results: list[StageResult] = []
    rounds = []

    def summarise(ticket: StageResult, kept: int, index: int, controls: dict, complete: bool) -> Summary:
        return run.write_summary(total, results=results, final=ticket, kept=kept, round_index=index, rounds=rounds,
                                 controls=controls, details=details, complete=complete)  # fmt: skip

    keep_best = method.prune_from == "best_val"
    previous_key = None
    if given is None or method.rewind_to > 0:  # a given mask rewound to the initialisation needs no dense stage
        hooks = [RewindCapture(run, method.rewind_to, method.rewind_unit)] if method.rewind_to > 0 else []
        dense = run.train(
            Stage("round00/dense", 0, "dense", epochs), model, enforcer, hooks, keep_weights=True,
            keep_best_state=keep_best,
        )  # fmt: skip
        results.append(dense)
        rounds.append(round_summary(0, total, total, dense))
        summary = summarise(dense, total, 0, {}, complete=not densities)
        previous_key = dense.key
    if given is not None:
        details["given_mask"] = method.mask  # as given (a resumed run trains the copy it saved)
        densities = [given[1].density()]
    start = _rewind_point(run, method, init_state)
    control_rounds = set(range(1, len(densities) + 1)) if method.control_rounds == "all" else {len(densities)}
    before: dict[str, Any] = {}  # the round's train accuracies before retraining (method.record_train_drops)
    for round_index, density in enumerate(densities, start=1):
        if given is not None:
            prune = functools.partial(Mask.clone, given[1])
        else:
            prune = functools.partial(_prune, run, model, params, previous_key, mask, density, round_index)
        mask = run.mask(f"round_{round_index:02d}", prune, round=round_index)
        if method.record_train_drops:  # before the release: the reference weights are measured first
            before = _before_retraining(run, model, previous_key, mask, start, round_index)
        if previous_key is not None:
            run.release_weights(previous_key)

        unwrap(model).load_state_dict(start.state)
        enforcer.set_mask(mask)
        ticket_key = f"round{round_index:02d}/ticket"
        ticket = run.train(
            Stage(ticket_key, round_index, "ticket", epochs, start_step=start.step, density=mask.density()),
            model,
            enforcer,
            keep_weights=True,  # the next round prunes them; the last round's are the run's ticket (analysis)
            keep_best_state=keep_best,
        )
        results.append(ticket)
        if method.record_train_drops:
            drops = _train_drops(run, model, round_index, ticket_key, mask, before)
            details.setdefault("train_drops", []).append(drops)
        controls = {}
        if round_index in control_rounds and method.controls:
            controls = train_controls(
                run, method.controls, round_index=round_index, mask=mask, model=model, enforcer=enforcer, start=start
            )
            results.extend(controls.values())
        rounds.append(round_summary(round_index, mask.num_kept(), total, ticket, controls))
        previous_key = ticket_key
        summary = summarise(ticket, mask.num_kept(), round_index, controls, complete=round_index == len(densities))
    return summary


def _before_retraining(
    run: RunContext, model: torch.nn.Module, key: str, mask: Mask, start: ControlStart, index: int
) -> dict[str, Any]:
    """Training accuracy of the network stage ``key`` trained (the weights the round ranked: final, or best
    validation with ``method.prune_from=best_val``), of those weights under ``mask`` (after pruning) and of the
    rewind-point weights under ``mask`` (after rewinding): paper 002, Table 2's first two columns."""
    which = _ranked(run)
    reference = _train_accuracy(run, model, f"{key}/{which}", lambda: run.load_weights(key, which))
    pruned = _train_accuracy(run, model, f"round{index:02d}/pruned", lambda: run.load_weights(key, which), mask)
    rewound = _train_accuracy(run, model, f"round{index:02d}/rewound", lambda: start.state, mask)
    return {"reference": key, "reference_acc": reference, "after_pruning_acc": pruned, "after_rewinding_acc": rewound}


def _train_drops(
    run: RunContext, model: torch.nn.Module, index: int, ticket_key: str, mask: Mask, before: dict[str, Any]
) -> dict[str, Any]:
    """The round's entry of ``details.train_drops``: the accuracies of :func:`_before_retraining`, the retrained
    ticket's (its weights ranked as the reference's were) and the three drops, ``acc - reference_acc`` as
    fractions (paper 002, Table 2 reports them in points: -19.8 there is -0.198 here). Logged as a ``train_drops``
    event when first measured (a resumed run reads the figures back from ``state.json`` and does not log again)."""
    which = _ranked(run)
    key = f"{ticket_key}/{which}"
    fresh = run.measured(key) is None
    retrained = _train_accuracy(run, model, key, lambda: run.load_weights(ticket_key, which))
    entry = {"round": index, "density": mask.density(), **before, "after_retraining_acc": retrained}
    for name in ("after_pruning", "after_rewinding", "after_retraining"):
        entry[f"drop_{name}"] = entry[f"{name}_acc"] - entry["reference_acc"]
    if fresh:
        run.tracker.log("train_drops", **entry)
    return entry


def _ranked(run: RunContext) -> str:
    return "best" if run.cfg.method.prune_from == "best_val" else "final"


def _train_accuracy(
    run: RunContext,
    model: torch.nn.Module,
    key: str,
    state: Any,
    mask: Mask | None = None,
) -> float:
    """Training accuracy of the weights ``state()`` (a callable: not read when the figure was kept, as after a
    resume whose weights were released), times ``mask`` when given, evaluated on the training split without
    augmentation (:meth:`RunContext.measure`). BatchNorm statistics are the state's own, not recomputed for the
    mask: the drop after pruning is the pruned network as it stands, as in the paper."""
    measured = run.measured(key)
    if measured is None:
        weights = dict(state())
        if mask is not None:
            weights.update({n: weights[n] * mask[n].to(weights[n].dtype) for n in mask.names()})
        unwrap(model).load_state_dict(weights)
        measured = run.measure(model, key)
    assert measured is not None, "the training split is empty"
    return measured[1]


def _given_mask(run: RunContext, params: dict[str, torch.nn.Parameter]) -> tuple[Path, Mask]:
    """``method.mask``: a saved mask from any method, checked against the tensors this run prunes."""
    method = run.cfg.method
    path, mask = resolve_mask(method.mask, method.mask_name)
    if mask.names() != list(params) or any(tuple(mask[n].shape) != tuple(p.shape) for n, p in params.items()):
        raise UserError(
            f"method.mask: {path} covers {', '.join(mask.names())}, this run prunes {', '.join(params)} "
            f"(another model, or other sparsity exclusions)"
        )
    return path, mask.to(next(iter(params.values())).device)


def _prune(
    run: RunContext,
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    key: str,
    alive: Mask,
    density: float,
    index: int,
) -> Mask:
    """The round's mask: ``density`` of the weights by the criterion, among the survivors ``alive``, ranked on the
    weights stage ``key`` ended with (or its best-validation weights, ``method.prune_from=best_val``); data-driven
    criteria evaluate ``model`` with those weights substituted."""
    method = run.cfg.method
    weights = run.load_weights(key, _ranked(run))
    unwrap(model).load_state_dict(weights)  # data-driven criteria see that state whole (biases, BN), fresh or resumed
    scores = CRITERIA.get(method.criterion)({n: weights[n] for n in params}, run.criterion_context(model, index))
    return prune_to_density(scores, density, scope=run.cfg.sparsity.scope, alive=alive)


def _check_rewind(method: LTHConfig, epochs: int, steps_per_epoch: int) -> None:
    limit = epochs if method.rewind_unit == "epoch" else epochs * steps_per_epoch
    if method.rewind_to >= limit:
        raise ConfigError(
            "method.rewind_to",
            method.rewind_to,
            f"fewer than the {limit} {method.rewind_unit}s of training (trainer.epochs={epochs})",
        )


def _rewind_point(run: RunContext, method: LTHConfig, init_state: dict[str, torch.Tensor]) -> ControlStart:
    if method.rewind_to == 0:
        return ControlStart(init_state, 0)
    payload = run.load_state_tensors("rewind")
    if payload is None:
        raise RuntimeError("the rewind point was not captured during dense training")
    return ControlStart(payload["model"], int(payload["step"]))
