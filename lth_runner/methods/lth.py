"""LTH (one-shot) and LTH-Iter (iterative magnitude pruning, IMP).

Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, Sec. 2 ("Identifying winning tickets"):
1. randomly initialise a network f(x; theta_0); 2. train it for j iterations to theta_j; 3. prune p% of the
parameters, creating a mask m; 4. reset the remaining parameters to their values in theta_0. Iterative pruning
repeats 2-4 for n rounds, each pruning p^(1/n)% of the survivors. Late rewinding (Frankle et al., "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020) resets to theta_k, the state after k epochs or
iterations, and resumes the learning-rate schedule at k.

Controls, selectable with ``method.controls`` (F&C Sec. 2, Figs. 3-4):
- ``reinit``: the ticket's mask on a fresh random initialisation (a new seed), trained from step 0;
- ``random_prune``: a random mask with the ticket's per-layer kept counts, on the rewind-point weights.

Choices where the papers leave room (also in docs/methods.md):
- the per-round schedule comes from the ``sparsity`` group: ``geometric`` (density after round i is
  ``r^(i/rounds)``, UniLTH Sec. 3.1) or ``fixed_fraction`` (remove ``rate`` of the survivors per round, open_lth);
- weights are ranked at the end of training (``prune_from=final``), or at the best validation epoch;
- after late rewinding the optimizer starts fresh (no momentum carried over), as open_lth does;
- ticket and controls of a round see the same data order (common random numbers reduce comparison noise).
"""

from __future__ import annotations

from typing import Any

import torch

from lth_runner.config.schema import LTHConfig
from lth_runner.errors import ConfigError
from lth_runner.methods import METHODS
from lth_runner.methods.summary import cost, header, round_entry
from lth_runner.session import RunContext
from lth_runner.sparse import (
    CRITERIA,
    Mask,
    MaskEnforcer,
    ScoreContext,
    prune_to_density,
    remaining_fraction,
    round_densities,
)
from lth_runner.sparse.prunable import unwrap
from lth_runner.training.trainer import Stage, StageResult
from lth_runner.utils.seeding import derive_seed


class RewindCapture:
    """Hook: save the model state after ``k`` epochs or iterations of dense training (the rewind point)."""

    def __init__(self, run: RunContext, k: int, unit: str) -> None:
        self.run, self.k, self.unit = run, k, unit

    def _capture(self, trainer: Any) -> None:
        state = {name: t.detach().clone() for name, t in unwrap(trainer.model).state_dict().items()}
        self.run.save_state_tensors("rewind", {"step": trainer.step, "model": state})

    def after_step(self, trainer: Any) -> None:
        if self.unit == "iteration" and trainer.step == self.k:
            self._capture(trainer)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.unit == "epoch" and trainer.epoch == self.k:
            self._capture(trainer)


@METHODS.register("lth", config=LTHConfig)
def lth(run: RunContext) -> dict[str, Any]:
    """One-shot LTH: train, prune straight to the target sparsity, rewind, retrain."""
    return iterative_magnitude_pruning(run, one_shot=True)


@METHODS.register("lth_iter", config=LTHConfig)
def lth_iter(run: RunContext) -> dict[str, Any]:
    """LTH-Iter / IMP: ``sparsity.rounds`` rounds of train, prune, rewind."""
    return iterative_magnitude_pruning(run, one_shot=False)


def iterative_magnitude_pruning(run: RunContext, *, one_shot: bool) -> dict[str, Any]:
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
    enforcer = MaskEnforcer(params)
    mask = Mask.ones_like(params)
    enforcer.set_mask(mask)
    run.log_start(
        total,
        densities=densities,
    )

    keep_best = method.prune_from == "best_val"
    hooks = [RewindCapture(run, method.rewind_to, method.rewind_unit)] if method.rewind_to > 0 else []
    dense = run.train(
        Stage("round00/dense", 0, "dense", epochs), model, enforcer, hooks, keep_weights=True, keep_best_state=keep_best
    )
    results: list[StageResult] = [dense]
    rounds = [round_entry(0, total, total, dense)]
    summary = _summary(run, total, densities, rounds, results, complete=False)
    run.write_summary(summary)

    rewind_state, rewind_step = _rewind_point(run, method, init_state)
    previous_key = dense.key
    control_rounds = set(range(1, len(densities) + 1)) if method.control_rounds == "all" else {len(densities)}
    for round_index, density in enumerate(densities, start=1):
        mask = _round_mask(run, method, round_index, density, mask, params, previous_key)
        run.release_weights(previous_key)

        unwrap(model).load_state_dict(rewind_state)
        enforcer.set_mask(mask)
        ticket_key = f"round{round_index:02d}/ticket"
        ticket = run.train(
            Stage(ticket_key, round_index, "ticket", epochs, start_step=rewind_step, density=mask.density()),
            model,
            enforcer,
            keep_weights=round_index < len(densities),
            keep_best_state=keep_best,
        )
        results.append(ticket)
        controls = {}
        if round_index in control_rounds:
            controls = _run_controls(run, method, round_index, model, enforcer, mask, rewind_state, rewind_step)
            results.extend(controls.values())
        rounds.append(round_entry(round_index, mask.num_kept(), total, ticket, controls))
        previous_key = ticket_key
        summary = _summary(run, total, densities, rounds, results, complete=round_index == len(densities))
        run.write_summary(summary)
    if not densities:
        summary["status"] = "complete"
        run.write_summary(summary)
    return summary


def _check_rewind(method: LTHConfig, epochs: int, steps_per_epoch: int) -> None:
    limit = epochs if method.rewind_unit == "epoch" else epochs * steps_per_epoch
    if method.rewind_to >= limit:
        raise ConfigError(
            "method.rewind_to",
            method.rewind_to,
            f"fewer than the {limit} {method.rewind_unit}s of training (trainer.epochs={epochs})",
        )


def _rewind_point(run: RunContext, method: LTHConfig, init_state: dict[str, torch.Tensor]) -> tuple[dict, int]:
    if method.rewind_to == 0:
        return init_state, 0
    payload = run.load_state_tensors("rewind")
    if payload is None:
        raise RuntimeError("the rewind point was not captured during dense training")
    return payload["model"], int(payload["step"])


def _round_mask(
    run: RunContext,
    method: LTHConfig,
    round_index: int,
    density: float,
    alive: Mask,
    params: dict[str, torch.nn.Parameter],
    previous_key: str,
) -> Mask:
    """The mask of this round: read back when a previous attempt saved it, else pruned from the last weights."""
    name = f"round_{round_index:02d}"
    saved = run.saved_mask(name)
    if saved is not None:
        return saved
    which = "best" if method.prune_from == "best_val" else "final"
    weights = run.load_weights(previous_key, which)
    ranked = {n: weights[n] for n in params}
    scores = CRITERIA.get(method.criterion)(
        ranked, ScoreContext(seed=derive_seed(run.cfg.seed, "criterion", round_index))
    )
    mask = prune_to_density(scores, density, scope=run.cfg.sparsity.scope, alive=alive)
    mask = run.save_mask(name, mask)
    run.tracker.log(
        "prune",
        round=round_index,
        density=mask.density(),
        kept=mask.num_kept(),
        total=mask.numel(),
        layer_densities=mask.layer_densities(),
    )
    return mask


def _run_controls(
    run: RunContext,
    method: LTHConfig,
    round_index: int,
    model: torch.nn.Module,
    enforcer: MaskEnforcer,
    mask: Mask,
    rewind_state: dict,
    rewind_step: int,
) -> dict[str, StageResult]:
    controls: dict[str, StageResult] = {}
    epochs = run.cfg.trainer.epochs
    for control in method.controls:
        key = f"round{round_index:02d}/{control}"
        if control == "reinit":
            fresh = run.new_model("reinit", round_index)
            unwrap(model).load_state_dict(unwrap(fresh).state_dict())
            control_mask, start = mask, 0
        else:  # random_prune
            control_mask = run.saved_mask(f"round_{round_index:02d}_random")
            if control_mask is None:
                control_mask = Mask.random_like(mask, generator=run.generator("random_prune", round_index))
                control_mask = run.save_mask(f"round_{round_index:02d}_random", control_mask)
            unwrap(model).load_state_dict(rewind_state)
            start = rewind_step
        enforcer.set_mask(control_mask)
        controls[control] = run.train(
            Stage(key, round_index, control, epochs, start_step=start, density=control_mask.density()), model, enforcer
        )
    enforcer.set_mask(mask)
    return controls


def _summary(
    run: RunContext,
    total: int,
    densities: list[float],
    rounds: list[dict],
    results: list[StageResult],
    *,
    complete: bool,
) -> dict[str, Any]:
    last = rounds[-1]
    final = {
        "round": last["round"],
        "density": last["density"],
        "kept": last["kept"],
        "test_acc": last["ticket"]["best_val_test_acc"],
        **last["ticket"],
        "controls": last["controls"],
    }
    return {
        **header(run, total, complete=complete),
        "planned_densities": densities,
        "rounds": rounds,
        "final": final,
        "cost": cost(results),
    }
