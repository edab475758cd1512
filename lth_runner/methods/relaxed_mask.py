"""Tickets from a relaxed mask learned with the weights: paper 001's concave regularizers and Continuous
Sparsification.

**relaxed_mask** (Fracastoro, Fosson, Migliorati, Calafiore, "Playing the Lottery With Concave Regularizers for
Sparse Trainable Neural Networks", arXiv 2501.11135, Fig. 1's three-stage pipeline):
1. train ``min_{theta, m in [0,1]^d} L(x; m * theta) + lambda * R(m)`` (``regularizer=mask_l1``: ``R = ||m||_1``;
   ``regularizer=mask_log``: the strictly concave ``sum log(1 + m/eps) / log(1 + 1/eps)``);
2. threshold ``m`` into a binary mask;
3. retrain ``m_hat * theta`` by rewinding (to the initialisation or to the weights after ``rewind_to`` epochs) or by
   fine-tuning.

**cs** (Savarese, Silva, Maire, "Winning the Lottery with Continuous Sparsification", NeurIPS 2020, Alg. 1 and
lolemacs/continuous-sparsification): the same pipeline with ``m = sigmoid(beta s) / sigmoid(s0)``, ``beta`` rising
to 200 within each of 3 rounds, ``s <- min(s, s0)`` between rounds (weights not rewound), the ticket ``s > 0`` trained
from the weights of epoch 2. The method is ``relaxed_mask``'s code with CS's settings (``conf/method/cs.yaml``).
The reference builds its final-ticket optimizer from a ``map`` iterator the first optimizer already consumed, so its
ticket phase gets no parameters to train; here the ticket trains like every other stage.

The seed copy of paper 001 holds its abstract and figure captions, not its equations' details, so every choice
below is an option (docs/methods.md has the table):
- parameterisation ``clip`` (default: m itself, projected onto [0, 1] after every step, the paper's box
  constraint) or ``sigmoid`` (CS's);
- threshold ``target`` (default: the top ``kept_count(n, 1 - sparsity.target)`` mask entries, so every method is
  compared at exactly the same density, globally or per layer) or ``value`` (``m > 0.5``);
- retraining by rewinding to epoch 2 (default, as CS, whose comparison paper 001 makes; ``rewind_to=0`` is
  Frankle & Carbin's rewind to theta_0) with the schedule resumed there, or fine-tuning from ``m * theta``;
- the mask parameters are an optimizer group of their own: the weights' rate and schedule and momentum, no weight
  decay (as CS);
- several rounds (``method.rounds``): ``hard`` (default) fixes each round's thresholded mask, at density
  ``d^(r/R)`` with a count threshold, and restarts ``m`` on its survivors; ``soft`` is CS's reset.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from lth_runner.config.schema import RelaxedMaskConfig, RunConfig
from lth_runner.errors import UserError
from lth_runner.methods.controls import ControlStart, train_controls
from lth_runner.methods.lth import RewindCapture
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, MaskEnforcer, remaining_fraction
from lth_runner.sparse.mask_penalties import penalty_of
from lth_runner.sparse.prunable import unwrap
from lth_runner.sparse.relaxed_mask import MaskPenalty, ProjectToUnitBox, RelaxedMaskedModel, TemperatureSchedule
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import Stage, StageResult


def relaxed_mask(run: RunContext) -> Summary:
    """Paper 001: relaxed mask under an l1 or concave penalty, threshold, retrain."""
    return learn_mask_then_retrain(run)


def continuous_sparsification(run: RunContext) -> Summary:
    """Continuous Sparsification (Savarese et al. 2020): the same pipeline with CS's recipe (conf/method/cs.yaml)."""
    return learn_mask_then_retrain(run)


def learn_mask_then_retrain(run: RunContext) -> Summary:
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, RelaxedMaskConfig)
    epochs = method.search_epochs or cfg.trainer.epochs
    densities = round_densities(method, remaining_fraction(cfg.sparsity.target))
    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    run.log_start(total, densities=densities if method.threshold_mode == "target" else [], mask_param=method.mask_param)
    wrapper = RelaxedMaskedModel(
        model, list(params), parameterisation=method.mask_param, init=method.initial_value(),
        scale=method.sigmoid_scale, mask_group=mask_group(cfg),
    )  # fmt: skip
    hooks = relaxed_hooks(cfg, wrapper, epochs)
    section: dict[str, Any] = {
        "mask_param": method.mask_param,
        "penalty": cfg.regularizer.name,
        "coefficient": cfg.regularizer.coefficient if cfg.regularizer.name != "none" else 0.0,
        "threshold_mode": method.threshold_mode,
        "retrain_from": method.retrain_from,
        "rounds": [],
    }
    results: list[StageResult] = []
    rounds = []
    previous_key = None
    mask = wrapper.mask()
    for index, density in enumerate(densities, start=1):
        key = f"round{index:02d}/relaxed"
        capture = []
        if index == 1 and method.retrain_from == "rewind" and method.rewind_to > 0:
            capture = [RewindCapture(run, method.rewind_to, method.rewind_unit, module=model)]
        relaxed = run.train(
            Stage(key, index, "search", epochs, density=wrapper.mask().density()), wrapper, None, hooks + capture,
            keep_weights=True,
        )  # fmt: skip
        results.append(relaxed)
        rounds.append(round_summary(index - 1, wrapper.mask().num_kept(), total, relaxed))
        above = wrapper.threshold_by_value(method.threshold)
        mask = run.mask(
            f"round_{index:02d}", functools.partial(threshold, run, wrapper, density, above), round=index,
            above_threshold=above.density(),
        )  # fmt: skip
        section["rounds"].append(
            {"round": index, "density": mask.density(), "kept": mask.num_kept(), "above_threshold": above.density()}
        )
        if previous_key is not None:
            run.release_weights(previous_key)
        previous_key = key
        if index < len(densities):
            if method.round_reset == "hard":
                wrapper.set_keep(mask)
            wrapper.restart(method.round_reset)
    if mask.num_kept() == 0:
        raise UserError(
            f"method.threshold={method.threshold} kept no weight: lower regularizer.coefficient, or set "
            f"method.threshold_mode=target"
        )
    if method.threshold_mode == "value":
        run.message(f"{method.name}: m > {method.threshold} kept {100 * mask.density():.2f}% of the weights")

    start = retrain_start(run, wrapper, init_state)
    final_index = len(densities)
    enforcer = MaskEnforcer(params, mask)
    ticket = run.train(
        Stage(f"round{final_index:02d}/ticket", final_index, "ticket", method.retrain_epochs or cfg.trainer.epochs,
              start_step=start.step, density=mask.density()),
        model,
        enforcer,
    )  # fmt: skip
    results.append(ticket)
    controls = {}
    if method.controls:  # random_prune starts where the ticket started (the rewind point), as in IMP
        controls = train_controls(run, method.controls, round_index=final_index, mask=mask, model=model,
                                  enforcer=enforcer, start=start)  # fmt: skip
        results.extend(controls.values())
    rounds.append(round_summary(final_index, mask.num_kept(), total, ticket, controls))
    return run.write_summary(total, results=results, final=ticket, kept=mask.num_kept(), round_index=final_index,
                             rounds=rounds, controls=controls, details={"relaxed": section}, complete=True)  # fmt: skip


def round_densities(method: RelaxedMaskConfig, final: float) -> list[float]:
    """The count threshold's density after each round: ``d^(r/R)`` when rounds fix their masks (``hard``), else
    the final density every round (a ``soft`` round's mask is recorded, not applied)."""
    rounds = method.rounds
    if method.round_reset == "hard":
        return [final ** (r / rounds) for r in range(1, rounds)] + [final]
    return [final] * rounds


def mask_group(cfg: RunConfig) -> dict[str, Any]:
    """The mask parameters' optimizer settings: ``method.mask_lr`` as a scale of the scheduled rate, momentum,
    weight decay."""
    method = cfg.method
    group: dict[str, Any] = {"weight_decay": method.mask_weight_decay}
    if method.mask_lr is not None:
        group["lr_scale"] = method.mask_lr / cfg.optim.lr
    if method.mask_momentum is not None:
        group["momentum"] = method.mask_momentum
    return group


def relaxed_hooks(cfg: RunConfig, wrapper: RelaxedMaskedModel, epochs: int) -> list[Any]:
    """The penalty gradient and the parameterisation's own step: projection (clip) or the temperature (sigmoid)."""
    method, regularizer = cfg.method, cfg.regularizer
    hooks: list[Any] = []
    cost, slope = penalty_of(regularizer.name, regularizer) if regularizer.name != "none" else (torch.zeros_like, None)
    coefficient = regularizer.coefficient if regularizer.name != "none" else 0.0
    hooks.append(MaskPenalty(wrapper, cost, coefficient, slope=slope, reduction=regularizer.reduction,
                             threshold=method.threshold))  # fmt: skip
    if method.mask_param == "clip":
        hooks.append(ProjectToUnitBox(wrapper))
    else:
        hooks.append(TemperatureSchedule(wrapper, method.final_temp, epochs))
    return hooks


def threshold(run: RunContext, wrapper: RelaxedMaskedModel, density: float, above: Mask) -> Mask:
    """The round's binary mask: exactly ``density`` by count, or the entries above the value threshold."""
    method = run.cfg.method
    if method.threshold_mode == "value":
        return above
    return wrapper.threshold_by_count(density, method.scope or run.cfg.sparsity.scope)


def retrain_start(run: RunContext, wrapper: RelaxedMaskedModel, init_state: dict[str, Any]) -> ControlStart:
    """Load the ticket's starting weights into the wrapped model: the initialisation or the rewind point (the
    schedule resumed there, or restarted), or the last relaxed round's weights (times ``m`` with ``fold_mask``)."""
    method = run.cfg.method
    folded = wrapper.folded() if method.retrain_from == "finetune" and method.fold_mask else None
    model = wrapper.release()
    if method.retrain_from == "finetune":
        if folded is not None:
            own = dict(model.named_parameters())
            for name, weight in folded.items():
                own[name].data.copy_(weight)
        return ControlStart({k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}, 0)
    if method.rewind_to == 0:
        unwrap(model).load_state_dict(init_state)
        return ControlStart(init_state, 0)
    payload = run.load_state_tensors("rewind")
    if payload is None:
        raise RuntimeError("the rewind point was not captured during the first relaxed round")
    unwrap(model).load_state_dict(payload["model"])
    step = int(payload["step"]) if method.rewind_schedule == "resume" else 0
    return ControlStart(payload["model"], step)
