"""UniLTH and UniDLTH: "A Unified View of Finding and Transforming Winning Lottery Tickets" (seed 000), Algorithm 1.

Stage 1 (lines 1-6): train the dense network with no regularization (and no weight decay unless
``method.weight_decay=both``) until the validation loss has not improved for ``patience`` (phi) epochs, capped at
``stage1_max_epochs``; then rewind weights and BatchNorm buffers to ``rewind`` (xi) epochs before the stop
(optionally the optimizer too).

Stage 2 (lines 7-16): train for ``E`` epochs under a growing penalty ``alpha(phi) * ||w_S||^2`` (regularizer group:
linear, LogLaw, ExpLaw, TanLaw; ceiling R_ceil), and prune ``psi = sparsity.rounds`` times (line 12). Event gamma
keeps ``r^(gamma/psi)`` of the weights (``p = 1 - r^(1/psi)`` of the survivors, Sec. 3.1; any schedule of the
sparsity group works, ``fixed_fraction`` too); the last one lands exactly on the target count.
- UniLTH penalises every prunable weight and prunes the smallest-magnitude survivors (globally, or per layer with
  ``sparsity.scope=layerwise``).
- UniDLTH draws, after the rewind, a random "unimportant" set U (per layer, uniform, seeded) of the size the target
  requires (line 7). It penalises only U (line 9), prunes only inside U (line 13, smallest magnitudes first), and
  the last event empties U (line 15).

Choices where the paper leaves room (all options; also in docs/methods.md):
- Training at the final mask. Algorithm 1 as printed prunes at iterations ``M/psi * gamma``, so the last event
  is the last optimizer step, and line 15 stops training there: the delivered network is never trained at its
  final mask. For UniDLTH that event removes U's largest remaining weights; unless the penalty has already zeroed
  them (it has in a 200-epoch stage 2, not in a short one) the network collapses: 16-21% test accuracy on the
  20-epoch MNIST recipe of docs/results.md. DLTH, which UniDLTH extends, always fine-tunes after its removal, and
  Sec. 3.3 describes rounds that train the survivors. The default therefore keeps Algorithm 1's events and then
  trains the final mask without penalty for ``finetune_epochs`` (null: half of ``trainer.epochs``, DLTH's default
  share for its fine-tune), with a fresh optimizer and schedule, as DLTH's fine-tune does. ``finetune_epochs=0``
  is the literal reading. ``last_event=before_end`` is Sec. 3.3's other reading: the psi events at
  ``M/(psi+1) * gamma``, so the last interval of stage 2 trains the final mask under the same schedule and
  penalty (with or without the fine-tune). docs/results.md measures all three.
- ``reset_after_prune=false`` (default) trains stage 2 as one continuous run. ``true`` follows Sec. 3.3's "train,
  prune, and reset": round gamma prunes the weights trained in round gamma-1 (round 1 prunes the weights at the
  stop of stage 1), resets the survivors to the rewind point, and trains its share of the E epochs (an exact
  integer split: round gamma ends after ``round(gamma * E / psi)`` epochs, so the rounds add up to E). The
  penalty's phi continues from where the previous round ended, so it grows exactly as in the continuous reading.
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
from lth_runner.methods.controls import controls_from_init
from lth_runner.session import RunContext
from lth_runner.sparse import CRITERIA, Mask, MaskEnforcer, kept_count, round_densities
from lth_runner.sparse.prunable import unwrap
from lth_runner.sparse.schedule import remaining_fraction
from lth_runner.sparse.select import select_top
from lth_runner.summary import Summary, round_summary
from lth_runner.training import EarlyStop, GrowingPenalty, KeepSnapshots, PruneEvent, PruneSchedule, SnapshotBuffer
from lth_runner.training.trainer import Stage, StageResult

DEFAULT_CEILING = {"unilth": 1e-3, "unidlth": 1e-2}


def unilth(run: RunContext) -> Summary:
    """Find a winning ticket: early stopping + rewind, then pruning under a growing penalty on all weights."""
    return unified(run, dual=False)


def unidlth(run: RunContext) -> Summary:
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


def unified(run: RunContext, *, dual: bool) -> Summary:
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, UniLTHConfig)
    name = method.name
    reg = cfg.regularizer
    ceiling = reg.ceiling if reg.ceiling is not None else DEFAULT_CEILING[name]
    sparsity = cfg.sparsity
    densities = round_densities(sparsity.target, schedule=sparsity.schedule, rounds=sparsity.rounds, rate=sparsity.rate)
    total_epochs = cfg.trainer.epochs
    steps_per_epoch = run.data.num_train_batches()
    if run.data.size("val") == 0:
        raise ConfigError("dataset.val_size", cfg.dataset.val_size, f"> 0: {name} stops stage 1 on validation loss")

    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    enforcer = MaskEnforcer(params, Mask.ones_like(params))
    run.log_start(total, regularizer=reg.name, ceiling=ceiling, densities=densities)
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
    _check_event_room(method, len(densities), stage2_epochs, steps_per_epoch)
    unimportant = run.mask("unimportant", lambda: _draw_unimportant(run, params)) if dual else None
    plan = _event_counts(params, densities, sparsity.scope, unimportant)
    stage2 = _Stage2(
        run,
        model,
        enforcer,
        params,
        rewind,
        unimportant,
        plan,
        ceiling=ceiling,
        epochs=stage2_epochs,
        start_epoch=start_epoch,
        steps_per_epoch=steps_per_epoch,
        weight_decay=decay if method.weight_decay in ("stage2", "both") else 0.0,
    )
    mode = _train_with_resets if method.reset_after_prune else _train_continuously
    last, stage2_results = mode(stage2)
    results += stage2_results
    mask = enforcer.mask
    assert mask is not None

    final_round = len(densities)
    finetune_epochs = method.resolved_finetune_epochs(total_epochs)
    if finetune_epochs:
        last = run.train(
            Stage(
                "stage3/finetune",
                final_round,
                "finetune",
                epochs=finetune_epochs,
                density=mask.density(),
                weight_decay=stage2.weight_decay,
            ),
            model,
            enforcer,
        )
        results.append(last)
        if method.reset_after_prune:
            run.release_weights(f"round{final_round:02d}/ticket")
    controls = controls_from_init(
        run, round_index=final_round, mask=mask, model=model, enforcer=enforcer, init_state=init_state, results=results
    )

    rounds = [round_summary(0, total, total, stage1)]
    if method.reset_after_prune:
        rounds += [round_summary(e.index, e.kept, total, r) for e, r in zip(plan.events[:-1], stage2_results[:-1])]
    rounds.append(round_summary(final_round, mask.num_kept(), total, last, controls))
    events = [{"event": e.index, "step": e.step, "kept": e.kept, "density": e.kept / total} for e in plan.events]
    details = {
        "stage1": info1,
        "stage2": {
            "mode": "reset" if method.reset_after_prune else "continuous",
            "last_event": method.last_event,
            "epochs": stage2_epochs,
            "finetune_epochs": finetune_epochs,
            "law": reg.name,
            "ceiling": ceiling,
            "gradient_scale": reg.gradient_scale,
            "granularity": reg.granularity,
            "events": events,
            **({"unimportant": unimportant.num_kept()} if unimportant is not None else {}),
        },
    }
    return run.write_summary(
        total,
        results=results,
        final=last,
        kept=mask.num_kept(),
        round_index=final_round,
        rounds=rounds,
        controls=controls,
        details=details,
        complete=True,
        ticket_found_epoch=rewind["stop_epoch"],
    )


def _check_event_room(method: UniLTHConfig, events: int, epochs: int, steps_per_epoch: int) -> None:
    """Every event needs its own optimizer step (and, read with resets, every round at least one epoch)."""
    if method.reset_after_prune:
        if epochs < events:
            raise ConfigError(
                "sparsity.rounds", events, f"at most {epochs} (the epochs of stage 2: one per round with resets)"
            )
        return
    room = epochs * steps_per_epoch - (1 if method.last_event == "before_end" else 0)
    if room < events:
        raise ConfigError("sparsity.rounds", events, f"at most {room} (the optimizer steps of stage 2) pruning events")


# ---------------------------------------------------------------------------------------------------- stage 2
class _Plan:
    """The pruning events of stage 2 (optimizer steps filled in per mode) and their exact kept counts."""

    def __init__(self, kept: list[int], layer_kept: list[dict[str, int]] | None) -> None:
        self.kept, self.layer_kept = kept, layer_kept
        self.events: list[PruneEvent] = []


def _event_counts(
    params: dict[str, torch.nn.Parameter], densities: list[float], scope: str, unimportant: Mask | None
) -> _Plan:
    """Kept counts after each event, for event densities ``densities`` (the last is the target's).

    UniLTH: ``densities[gamma-1]`` of the weights (per layer with the layerwise scope), never increasing.
    UniDLTH: a growing share of U is removed, ``(1 - d_gamma) / (1 - r)`` of it, and all of it at the end.
    """
    sizes = {n: p.numel() for n, p in params.items()}
    remaining = densities[-1]
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


def _select(
    run: RunContext,
    model: nn.Module,
    params: dict[str, torch.nn.Parameter],
    unimportant: Mask | None,
    plan: _Plan,
    alive: Mask,
    event: PruneEvent,
) -> Mask:
    """The mask after ``event``: the smallest-magnitude survivors go (only inside U for UniDLTH)."""
    criterion = CRITERIA.get(run.cfg.method.criterion)
    scores = criterion({n: p.detach() for n, p in params.items()}, run.criterion_context(model, event.index))
    if unimportant is not None:  # weights outside U can never be chosen for removal
        scores = {n: s.masked_fill(~unimportant[n], math.inf) for n, s in scores.items()}
    if plan.layer_kept is not None:
        layer = plan.layer_kept[event.index - 1]
        return Mask({n: select_top({n: scores[n]}, layer[n], Mask({n: alive[n]}))[n] for n in scores})
    return select_top(scores, event.kept, alive)


def _draw_unimportant(run: RunContext, params: dict[str, torch.nn.Parameter]) -> Mask:
    """UniDLTH's random set U (True = unimportant): per layer, uniform, the size the target sparsity requires."""
    keep = Mask.random(
        {n: p.shape for n, p in params.items()},
        remaining_fraction(run.cfg.sparsity.target),
        generator=run.generator("unimportant"),
        device=next(iter(params.values())).device,
    )
    return Mask({n: ~keep[n] for n in keep})


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

    def prune(self, alive: Mask, event: PruneEvent) -> Mask:
        """The mask of ``event`` (``masks/round_XX.pt``): read back if saved, else selected, saved and logged."""
        select: Callable[[], Mask] = lambda: _select(  # noqa: E731
            self.run, self.model, self.params, self.unimportant, self.plan, alive, event
        )
        return self.run.mask(f"round_{event.index:02d}", select, round=event.index, step=event.step)

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


def _train_continuously(s: _Stage2) -> tuple[StageResult, list[StageResult]]:
    """One run of ``E`` epochs with ``psi`` evenly spaced pruning events: at iterations ``M/(psi+1) * gamma``
    (``last_event=before_end``, the final interval trains the final mask) or ``M/psi * gamma`` (``at_end``)."""
    steps = s.epochs * s.steps_per_epoch
    intervals = s.rounds + 1 if s.run.cfg.method.last_event == "before_end" else s.rounds
    s.plan.events = [
        PruneEvent(g, s.start_step + math.floor(g * steps / intervals + 0.5), s.plan.kept[g - 1])
        for g in range(1, s.rounds + 1)
    ]
    schedule = PruneSchedule(s.enforcer, s.plan.events, lambda _trainer, alive, event: s.prune(alive, event))
    result = s.train(s.stage("stage2/prune", s.rounds, "prune", s.epochs), [s.penalty(), schedule], keep_weights=True)
    s.enforcer.set_mask(s.run.saved_mask(f"round_{s.rounds:02d}"))
    return result, [result]


def round_boundaries(epochs: int, rounds: int) -> list[int]:
    """Epochs of stage 2 after which each of ``rounds`` rounds ends: ``round(gamma * E / psi)`` (half up), an
    exact integer split of ``E``, starting with 0."""
    return [math.floor(g * epochs / rounds + 0.5) for g in range(rounds + 1)]


def _train_with_resets(s: _Stage2) -> tuple[StageResult, list[StageResult]]:
    """Sec. 3.3: every round prunes the previous round's weights, resets the survivors to the rewind point and
    trains its share of the E epochs; the penalty continues from where the previous round ended."""
    bounds = round_boundaries(s.epochs, s.rounds)
    # a fine-tune at the final mask continues from the last round's weights, which a resume must find on disk
    finetune_follows = s.run.cfg.method.resolved_finetune_epochs(s.run.cfg.trainer.epochs) > 0
    s.plan.events = [PruneEvent(g, s.start_step, s.plan.kept[g - 1]) for g in range(1, s.rounds + 1)]
    results, previous_key, alive = [], "stage1/dense", Mask.ones_like(s.params)
    for event in s.plan.events:
        if s.run.saved_mask(f"round_{event.index:02d}") is None:
            unwrap(s.model).load_state_dict(s.run.load_weights(previous_key))
        mask = s.prune(alive, event)
        s.run.release_weights(previous_key)
        s.enforcer.set_mask(mask)
        key = f"round{event.index:02d}/ticket"
        length = bounds[event.index] - bounds[event.index - 1]
        stage = s.stage(key, event.index, "ticket", length, density=mask.density())
        hooks = [s.penalty(offset_epochs=bounds[event.index - 1])]
        results.append(s.train(stage, hooks, keep_weights=event.index < s.rounds or finetune_follows))
        previous_key, alive = key, mask
    return results[-1], results
