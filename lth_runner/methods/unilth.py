"""UniLTH and UniDLTH: "A Unified View of Finding and Transforming Winning Lottery Tickets" (seed 000), Algorithm 1.

Stage 1 (lines 1-6): train the dense network with no regularization (and no weight decay unless
``method.weight_decay=both``) until the validation loss has not improved for ``patience`` (phi) epochs, capped at
``stage1_max_epochs``; then rewind weights and BatchNorm buffers to ``rewind`` (xi) epochs before the stop
(optionally the optimizer too).

Stage 2 (lines 7-16): train for ``E`` epochs under a growing penalty ``alpha(phi) * ||w_S||^2`` (regularizer group:
linear, LogLaw, ExpLaw, TanLaw; ceiling R_ceil), and prune ``psi = sparsity.rounds`` times, at iterations
``M/psi * gamma`` (line 12). Each event keeps ``r^(gamma/psi)`` of the weights (``p = 1 - r^(1/psi)`` of the
survivors, Sec. 3.1); the last one lands exactly on the target count.
- UniLTH penalises every prunable weight and prunes the smallest-magnitude survivors (globally, or per layer with
  ``sparsity.scope=layerwise``).
- UniDLTH draws, after the rewind, a random "unimportant" set U (per layer, uniform, seeded) of the size the target
  requires (line 7). It penalises only U (line 9), prunes only inside U (line 13, smallest magnitudes first), and
  the last event empties U (line 15).

Choices where the paper leaves room (all options; also in docs/methods.md):
- The last event happens at the last iteration (line 12 with gamma = psi) and training stops (line 15): the network
  is not trained at its final density. That is cheap in the paper's 200-epoch regime, where the penalty has nearly
  zeroed what the last event removes, and costly in short runs; ``finetune_epochs`` adds training after it.
- ``reset_after_prune=false`` (default) follows Algorithm 1: stage 2 is one continuous run, the penalty grows over
  its E epochs, and the network delivered is the one after the last event (plus ``finetune_epochs``, default 0).
  ``true`` follows Sec. 3.3's "repeatedly train, prune, and reset". Round gamma prunes the weights trained in round
  gamma-1 (round 1 prunes the weights at the stop of stage 1), resets the survivors to the rewind point, and trains
  E/psi epochs. The penalty's phi continues across rounds, so it grows exactly as in the continuous reading.
- phi counts stage-2 epochs, fractionally per iteration (``regularizer.granularity=epoch`` holds it per epoch). E
  is ``stage2_epochs``, by default what remains of ``trainer.epochs`` after the rewind epoch, so stage 1 plus
  stage 2 spend the usual budget. The learning-rate schedule continues from the rewind epoch
  (``rewind_schedule``).
- No standard weight decay in either stage by default (``weight_decay=none``): the paper's stage 1 is
  regularization-free and stage 2's regularizer is the growing penalty.
- R_ceil defaults to the paper's settings: 1e-3 for UniLTH, 1e-2 for UniDLTH (Sec. 4.2, Table 2 caption).
- The penalty gradient is ``2 * alpha * w`` (``regularizer.gradient_scale``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lth_runner.config.schema import UniLTHConfig
from lth_runner.errors import ConfigError
from lth_runner.methods import METHODS
from lth_runner.methods.summary import cost, final_block, header, stage_summary
from lth_runner.session import RunContext
from lth_runner.sparse import CRITERIA, Mask, MaskEnforcer, ScoreContext, geometric_densities, kept_count
from lth_runner.sparse.prunable import unwrap
from lth_runner.sparse.schedule import remaining_fraction
from lth_runner.sparse.select import select_top
from lth_runner.training import EarlyStop, GrowingPenalty, KeepSnapshots, PruneEvent, PruneSchedule, SnapshotBuffer
from lth_runner.training.trainer import Stage, StageResult
from lth_runner.utils.seeding import derive_seed

DEFAULT_CEILING = {"unilth": 1e-3, "unidlth": 1e-2}


@METHODS.register("unilth", config=UniLTHConfig, uses_regularizer=True)
def unilth(run: RunContext) -> dict[str, Any]:
    """Find a winning ticket: early stopping + rewind, then pruning under a growing penalty on all weights."""
    return unified(run, dual=False)


@METHODS.register("unidlth", config=UniLTHConfig, uses_regularizer=True)
def unidlth(run: RunContext) -> dict[str, Any]:
    """Transform a random ticket: as UniLTH, but the penalty and the pruning act on a random set only."""
    return unified(run, dual=True)


class SaveRewindPoint:
    """Hook for stage 1: when it ends (patience exhausted, or the cap reached), save the snapshot ``xi`` epochs
    before the stop. Saved inside the stage, so a run never has a finished stage 1 without its rewind point."""

    def __init__(self, run: RunContext, stopper: EarlyStop, buffer: SnapshotBuffer, rewind: int) -> None:
        self.run, self.stopper, self.buffer, self.rewind = run, stopper, buffer, rewind

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        stopped = self.stopper.stopper.stopped_epoch is not None
        if not stopped and trainer.epoch < trainer.stage.epochs:
            return
        target = max(trainer.epoch - self.rewind, 0)
        snapshot = self.buffer.at(target)
        self.run.save_state_tensors(
            "rewind",
            {**snapshot.state_dict(), "stop_epoch": trainer.epoch, "stopped_by": "patience" if stopped else "cap"},
        )
        self.run.tracker.log(
            "rewind", stop_epoch=trainer.epoch, rewind_epoch=target, stopped_by="patience" if stopped else "cap"
        )


def unified(run: RunContext, *, dual: bool) -> dict[str, Any]:
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, UniLTHConfig)
    name = method.name
    reg = cfg.regularizer
    ceiling = reg.ceiling if reg.ceiling is not None else DEFAULT_CEILING[name]
    rounds = cfg.sparsity.rounds
    total_epochs = cfg.trainer.epochs
    steps_per_epoch = run.data.num_train_batches()
    if cfg.sparsity.schedule != "geometric":
        raise ConfigError(
            "sparsity.schedule",
            cfg.sparsity.schedule,
            f"geometric: {name} prunes r^(gamma/psi) per event (seed 000, Sec. 3.1)",
        )
    if run.data.size("val") == 0:
        raise ConfigError("dataset.val_size", cfg.dataset.val_size, f"> 0: {name} stops stage 1 on validation loss")

    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    enforcer = MaskEnforcer(params, Mask.ones_like(params))
    run.log_start(
        total,
        regularizer=reg.name,
        ceiling=ceiling,
    )
    decay = cfg.optim.weight_decay

    # ------------------------------------------------------------------ stage 1: early stopping and rewind
    stopper = EarlyStop(method.patience, monitor="val_loss", min_delta=method.min_delta)
    buffer = SnapshotBuffer(method.rewind + 1, include_optimizer=method.rewind_optimizer)
    stage1 = run.train(
        Stage(
            "stage1/dense",
            0,
            "dense",
            epochs=method.stage1_max_epochs or total_epochs,
            schedule_epochs=total_epochs,
            weight_decay=decay if method.weight_decay == "both" else 0.0,
        ),
        model,
        enforcer,
        [stopper, KeepSnapshots(buffer), SaveRewindPoint(run, stopper, buffer, method.rewind)],
        keep_weights=method.reset_after_prune,
    )
    rewind = run.load_state_tensors("rewind")
    info1 = {
        "stop_epoch": rewind["stop_epoch"],
        "stopped_by": rewind["stopped_by"],
        "rewind_epoch": rewind["epoch"],
        "rewind_step": rewind["step"],
        **stage_summary(stage1),
    }
    results = [stage1]

    # ------------------------------------------------------------------ stage 2: growing penalty and pruning
    start_epoch = rewind["epoch"] if method.rewind_schedule else 0
    stage2_epochs = method.stage2_epochs or total_epochs - rewind["epoch"]
    if stage2_epochs < 1:
        raise ConfigError(
            "method.stage2_epochs",
            method.stage2_epochs,
            f">= 1 (stage 1 stopped at epoch {rewind['stop_epoch']} of trainer.epochs={total_epochs})",
        )
    if stage2_epochs * steps_per_epoch < rounds:
        raise ConfigError(
            "sparsity.rounds",
            rounds,
            f"at most {stage2_epochs * steps_per_epoch} (the optimizer steps of stage 2) pruning events",
        )
    unimportant = _unimportant_set(run, params) if dual else None
    plan = _event_counts(params, cfg.sparsity.target, rounds, cfg.sparsity.scope, unimportant)
    selector = _selector(run, params, unimportant, plan)
    weight_decay = decay if method.weight_decay in ("stage2", "both") else 0.0
    stage2 = _Stage2(
        run,
        model,
        enforcer,
        params,
        rewind,
        unimportant,
        plan,
        selector,
        ceiling=ceiling,
        epochs=stage2_epochs,
        start_epoch=start_epoch,
        steps_per_epoch=steps_per_epoch,
        weight_decay=weight_decay,
    )
    last, stage2_results = (_train_with_resets if method.reset_after_prune else _train_continuously)(stage2)
    results += stage2_results
    mask = enforcer.mask
    assert mask is not None

    if method.finetune_epochs:
        last = run.train(
            Stage(
                "stage3/finetune",
                rounds + 1,
                "finetune",
                epochs=method.finetune_epochs,
                density=mask.density(),
                weight_decay=weight_decay,
            ),
            model,
            enforcer,
        )
        results.append(last)

    events = [{"event": e.index, "step": e.step, "kept": e.kept, "density": e.kept / total} for e in plan.events]
    summary = {
        **header(run, total, complete=True),
        "stage1": info1,
        "stage2": {
            "mode": "reset" if method.reset_after_prune else "continuous",
            "epochs": stage2_epochs,
            "law": reg.name,
            "ceiling": ceiling,
            "gradient_scale": reg.gradient_scale,
            "granularity": reg.granularity,
            "events": events,
            **({"unimportant": int(sum(int(u.sum()) for _, u in unimportant.items()))} if dual else {}),
        },
        "final": final_block(last, mask.num_kept(), total),
        "cost": cost(results, ticket_found_epoch=rewind["stop_epoch"]),
    }
    run.write_summary(summary)
    return summary


# ---------------------------------------------------------------------------------------------------- stage 2
class _Plan:
    """The pruning events of stage 2 (optimizer steps filled in per mode) and their exact kept counts."""

    def __init__(self, kept: list[int], layer_kept: list[dict[str, int]] | None) -> None:
        self.kept, self.layer_kept = kept, layer_kept
        self.events: list[PruneEvent] = []


def _event_counts(
    params: dict[str, torch.nn.Parameter], target: float, rounds: int, scope: str, unimportant: Mask | None
) -> _Plan:
    """Kept counts after each of the ``rounds`` events.

    UniLTH: ``r^(gamma/psi)`` of the weights (per layer with the layerwise scope), never increasing.
    UniDLTH: a growing share of U is removed, ``(1 - r^(gamma/psi)) / (1 - r)`` of it, and all of it at the end.
    """
    sizes = {n: p.numel() for n, p in params.items()}
    densities = geometric_densities(target, rounds)
    remaining = remaining_fraction(target)
    if unimportant is not None:
        share = [(1 - d) / (1 - remaining) if remaining < 1 else 1.0 for d in densities[:-1]] + [1.0]
        u_sizes = {n: int(unimportant[n].sum()) for n in sizes}
        if scope == "layerwise":
            layer_kept = [{n: sizes[n] - math.floor(u_sizes[n] * s + 0.5) for n in sizes} for s in share]
            return _Plan([sum(k.values()) for k in layer_kept], layer_kept)
        u_total = sum(u_sizes.values())
        return _Plan([sum(sizes.values()) - math.floor(u_total * s + 0.5) for s in share], None)
    if scope == "layerwise":
        layer_kept, previous = [], dict(sizes)
        for density in densities:
            previous = {n: min(previous[n], kept_count(sizes[n], density)) for n in sizes}
            layer_kept.append(previous)
        return _Plan([sum(k.values()) for k in layer_kept], layer_kept)
    total, counts, previous = sum(sizes.values()), [], sum(sizes.values())
    for density in densities:
        previous = min(previous, kept_count(total, density))
        counts.append(previous)
    return _Plan(counts, None)


def _selector(run: RunContext, params: dict[str, torch.nn.Parameter], unimportant: Mask | None, plan: _Plan):
    """``select(trainer, alive, event) -> mask``: the smallest-magnitude survivors go (inside U for UniDLTH)."""
    criterion = CRITERIA.get(run.cfg.method.criterion)

    def select(_trainer: Any, alive: Mask, event: PruneEvent) -> Mask:
        context = ScoreContext(seed=derive_seed(run.cfg.seed, "criterion", event.index))
        scores = criterion({n: p.detach() for n, p in params.items()}, context)
        if unimportant is not None:  # weights outside U can never be chosen for removal
            scores = {n: s.masked_fill(~unimportant[n], math.inf) for n, s in scores.items()}
        if plan.layer_kept is not None:
            layer = plan.layer_kept[event.index - 1]
            return Mask({n: select_top({n: scores[n]}, layer[n], Mask({n: alive[n]}))[n] for n in scores})
        return select_top(scores, event.kept, alive)

    return select


def _unimportant_set(run: RunContext, params: dict[str, torch.nn.Parameter]) -> Mask:
    """UniDLTH's random set U (True = unimportant): per layer, uniform, the size the target sparsity requires."""
    saved = run.saved_mask("unimportant")
    if saved is not None:
        return saved
    remaining = remaining_fraction(run.cfg.sparsity.target)
    keep = Mask.random(
        {n: p.shape for n, p in params.items()},
        remaining,
        generator=run.generator("unimportant"),
        device=next(iter(params.values())).device,
    )
    unimportant = Mask({n: ~keep[n] for n in keep})
    unimportant = run.save_mask("unimportant", unimportant)
    return unimportant


@dataclasses.dataclass
class _Stage2:
    """What the two readings of stage 2 share: the model and its mask, the rewind point, the event plan, and how a
    stage of stage 2 is built, penalised, trained and pruned."""

    run: RunContext
    model: nn.Module
    enforcer: MaskEnforcer
    params: dict[str, nn.Parameter]
    rewind: dict[str, Any]
    unimportant: Mask | None
    plan: _Plan
    select: Callable[[Any, Mask, PruneEvent], Mask]
    ceiling: float
    epochs: int  # E of the laws
    start_epoch: int  # the schedule position stage 2 starts from (the rewind epoch, or 0)
    steps_per_epoch: int
    weight_decay: float

    @property
    def rounds(self) -> int:
        return len(self.plan.kept)

    @property
    def start_step(self) -> int:
        return self.start_epoch * self.steps_per_epoch

    @property
    def total(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def penalty(self, offset_epochs: float = 0.0) -> GrowingPenalty:
        reg = self.run.cfg.regularizer
        return GrowingPenalty(
            self.params,
            law=reg.name,
            ceiling=self.ceiling,
            epochs=self.epochs,
            start_step=self.start_step,
            steps_per_epoch=self.steps_per_epoch,
            selection=self.unimportant,
            granularity=reg.granularity,
            gradient_scale=reg.gradient_scale,
            offset_epochs=offset_epochs,
        )

    def stage(self, key: str, round_index: int, phase: str, length: int, density: float = 1.0) -> Stage:
        """A stage of ``length`` epochs starting at the rewind point (the schedule continues from there)."""
        end = self.start_epoch + length
        schedule = max(self.run.cfg.trainer.epochs, end) if self.run.cfg.method.rewind_schedule else length
        return Stage(
            key,
            round_index,
            phase,
            epochs=end,
            start_step=self.start_step,
            schedule_epochs=schedule,
            density=density,
            weight_decay=self.weight_decay,
        )

    def train(self, stage: Stage, hooks: list[Any], *, keep_weights: bool) -> StageResult:
        unwrap(self.model).load_state_dict(self.rewind["model"])
        optimizer = self.rewind.get("optimizer") if self.run.cfg.method.rewind_optimizer else None
        return self.run.train(
            stage, self.model, self.enforcer, hooks, keep_weights=keep_weights, optimizer_state=optimizer
        )

    def record(self, mask: Mask, event: PruneEvent) -> Mask:
        """Save (as agreed by every rank) and log the mask of pruning event ``event``."""
        mask = self.run.save_mask(f"round_{event.index:02d}", mask)
        self.run.tracker.log(
            "prune",
            round=event.index,
            step=event.step,
            density=mask.density(),
            kept=mask.num_kept(),
            total=self.total,
            layer_densities=mask.layer_densities(),
        )
        return mask


def _train_continuously(s: _Stage2) -> tuple[StageResult, list[StageResult]]:
    """Algorithm 1: one run of ``E`` epochs with the pruning events at iterations ``M/psi * gamma``."""
    steps = s.epochs * s.steps_per_epoch
    s.plan.events = [
        PruneEvent(g, s.start_step + math.floor(g * steps / s.rounds + 0.5), s.plan.kept[g - 1])
        for g in range(1, s.rounds + 1)
    ]
    schedule = PruneSchedule(s.enforcer, s.plan.events, s.select, lambda mask, event, _: s.record(mask, event))
    result = s.train(s.stage("stage2/prune", 1, "prune", s.epochs), [s.penalty(), schedule], keep_weights=True)
    s.enforcer.set_mask(s.run.saved_mask(f"round_{s.rounds:02d}"))
    return result, [result]


def _train_with_resets(s: _Stage2) -> tuple[StageResult, list[StageResult]]:
    """Sec. 3.3: every round prunes the previous round's weights, resets the survivors to the rewind point and
    trains E/psi epochs; the penalty keeps growing across rounds."""
    per_round = max(1, math.floor(s.epochs / s.rounds + 0.5))
    s.plan.events = [PruneEvent(g, s.start_step, s.plan.kept[g - 1]) for g in range(1, s.rounds + 1)]
    results, previous_key, alive = [], "stage1/dense", Mask.ones_like(s.params)
    for event in s.plan.events:
        mask = s.run.saved_mask(f"round_{event.index:02d}")
        if mask is None:
            unwrap(s.model).load_state_dict(s.run.load_weights(previous_key))
            mask = s.record(s.select(None, alive, event), event)
        s.run.release_weights(previous_key)
        s.enforcer.set_mask(mask)
        key = f"round{event.index:02d}/ticket"
        stage = s.stage(key, event.index, "ticket", per_round, density=mask.density())
        hooks = [s.penalty(offset_epochs=(event.index - 1) * s.epochs / s.rounds)]
        results.append(s.train(stage, hooks, keep_weights=event.index < s.rounds))
        previous_key, alive = key, mask
    return results[-1], results
