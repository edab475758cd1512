"""DLTH and DLTH-Iter: random sparse network transformation (RST) of Bai et al., "Dual Lottery Ticket Hypothesis",
ICLR 2022, used as baselines by seed 000 ("UniLTH/UniDLTH", Sec. 4.1).

DLTH (``method=dlth``), one cycle:
1. from the random initialisation, draw per layer a uniformly random set U of weights to remove, exactly
   ``n - kept_count(n, 1 - target)`` of the ``n`` weights of each layer (saved as ``masks/dlth_unimportant.pt``,
   True = to be removed);
2. stage ``transform/dense``: train the dense network while an L2 penalty ``alpha * ||w_U||^2`` acts on U only;
   ``alpha`` grows from 0 to the ceiling over ``grow_epochs`` and is then held there for ``stabilize_epochs``
   (information is "extruded" from U into the kept weights);
3. remove U (the mask, the complement of U, is ``masks/round_01.pt``) and fine-tune the sparse network for
   ``finetune_epochs`` (stage ``finetune/ticket``).

DLTH-Iter (``method=dlth_iter``): ``C = sparsity.rounds`` cycles of the same, each removing ``p_e = 1 - r^(1/C)``
of the survivors (``r = 1 - target``), so after cycle ``c`` the pruned fraction is ``1 - (1 - p_e)^c`` and after
``C`` exactly the target (exact per-layer counts from ``round_counts(n, densities)``; any schedule of the sparsity
group works). Each cycle draws its new random set among the weights not chosen before, then ``cycleXX/transform``
(penalty on the new set; earlier removals held at zero), removal, ``cycleXX/finetune``. ``grow_epochs``,
``stabilize_epochs`` and ``finetune_epochs`` are per cycle.

The reference RST_Iter recipe (``method=dlth_iter_reference``: ``zero_between_cycles=false``,
``finetune_between_cycles=false``, its pruning phase below) differs: a cycle's set is not removed when the cycle
ends; every cycle restarts the penalty from 0 on the whole set chosen so far (``iter_rand``), and the cumulative
set is removed once, after the last cycle, followed by one fine-tune.

From the paper: random selection of the sparse structure from the random initialisation, the growing L2 penalty on
the weights to be removed only, one-shot removal followed by fine-tuning. From the reference code (yueb17/DLTH,
``pruner/reg_pruner.py``, ``reg_pruner_iterative.py``, ``meta_pruner.py``, ``option.py``): selection per layer
(``pick_pruned=rand``); a linear rise (``reg += reg_granularity_prune`` every ``update_reg_interval`` iterations,
the ``linear`` law here with ``regularizer.granularity=iteration``); the hold at the ceiling
(``stabilize_reg_interval``); fine-tuning with a fresh optimizer and learning-rate schedule (``finetune_restart``);
for RST_Iter, new weights drawn at random among the survivors each cycle (``iter_rand``) and the cumulative rate
``1 - (1 - p_e)^c``; ordinary weight decay stays in the optimizer (``optim.weight_decay``; the reference uses 1e-4).

Choices (also in docs/methods.md):
- Ceiling: ``regularizer.ceiling``; null takes 2e-3, seed 000's setting for its DLTH baselines ("weight decay
  starting from 0, and ceiling bound is 2e-3", Sec. 4.1). The reference code's ``reg_upper_limit`` is 1.0 (with a
  growth of 1e-4 every 5 iterations, i.e. 50,000 iterations, and 40,000 more at the ceiling): set
  ``regularizer.ceiling=1.0`` (and long grow/stabilize phases) to reproduce it.
- The factor 2: the penalty adds ``gradient_scale * alpha * w`` to the gradient of U. The default 2.0 is the
  derivative of ``alpha * ||w_U||^2`` (seed 000's notation); the reference code adds ``reg * w``, i.e.
  ``regularizer.gradient_scale=1.0`` (a penalty ``alpha / 2 * ||w_U||^2``). Same ceiling, twice the pull by default.
- Phase lengths are in epochs: null grow/stabilize take 30% / 20% of ``trainer.epochs`` (rounded half up, grow at
  least 1) and null finetune the rest, so one cycle spends the usual budget. ``alpha`` is updated every iteration
  (``regularizer.granularity``); any law of the regularizer group can replace the linear one.
- The learning-rate schedule (``optim``) spans the transform stage; with ``finetune_restart`` the fine-tune gets a
  fresh optimizer and schedule (as the reference's ``lr_ft``), otherwise the transform stage's optimizer state and
  schedule position carry on, one schedule spanning transform + fine-tune. Every DLTH-Iter cycle starts with a
  fresh optimizer and schedule (the reference builds a new optimizer per cycle); ``finetune_restart`` applies
  inside each cycle.
- Selection is random per layer whatever ``sparsity.scope`` says (scope only matters for magnitude rankings);
  ``sparsity.exclude*`` still keeps layers out. Counts are exact (``kept_count`` rounding); unlike the reference's
  ``ceil`` it can remove a whole layer only when ``n * (1 - target) < 0.5``.
- ``finetune_epochs=0``: no fine-tuning; the pruned network is evaluated once (the result is saved and counts no
  epochs). DLTH-Iter with 0 is the reference's ``RST_Iter_ft=0`` (the next cycle's transform trains on).
- ``regularizer=none`` is accepted: no penalty, i.e. random pruning after dense training (an ablation).
- The pruning (transform) phase trains with the run's optimizer recipe unless ``transform_lr``,
  ``transform_batch_size`` or ``transform_schedule`` say otherwise. The reference's phase is constant-LR SGD at
  1e-3 with batch 64 (``lr_prune``, ``batch_size_prune``; ``method=dlth_reference`` / ``dlth_iter_reference``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from lth_runner import distributed
from lth_runner.config.schema import DLTHConfig, OptimConfig, RegularizerConfig
from lth_runner.errors import ConfigError
from lth_runner.methods.controls import controls_from_init
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, MaskEnforcer, remaining_fraction, round_counts, round_densities
from lth_runner.sparse.prunable import unwrap
from lth_runner.summary import StageSummary, Summary, round_summary
from lth_runner.training.penalty import GrowingPenalty
from lth_runner.training.trainer import Stage, StageResult

DEFAULT_CEILING = 2e-3  # seed 000, Sec. 4.1, its DLTH/DLTH-Iter baselines


def dlth(run: RunContext) -> Summary:
    """DLTH: random per-layer set, growing penalty on it, one-shot removal, fine-tuning."""
    return random_sparse_transformation(run, iterative=False)


def dlth_iter(run: RunContext) -> Summary:
    """DLTH-Iter: ``sparsity.rounds`` cycles of DLTH, each removing ``1 - r^(1/C)`` of the survivors."""
    return random_sparse_transformation(run, iterative=True)


# ------------------------------------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True)
class PhaseEpochs:
    """Epochs of one cycle: penalty rising, penalty held, fine-tuning after the removal."""

    grow: int
    stabilize: int
    finetune: int

    @property
    def transform(self) -> int:
        return self.grow + self.stabilize


def _half_up(value: float) -> int:
    return math.floor(round(value, 9) + 0.5)  # 0.3 * E without floating-point residue at the .5 edges


def resolve_epochs(method: DLTHConfig, trainer_epochs: int) -> PhaseEpochs:
    """Null phases: grow 30% and stabilize 20% of ``trainer_epochs`` (half up, grow >= 1), fine-tune the rest."""
    grow = method.grow_epochs if method.grow_epochs is not None else max(1, _half_up(0.3 * trainer_epochs))
    stabilize = method.stabilize_epochs if method.stabilize_epochs is not None else _half_up(0.2 * trainer_epochs)
    finetune = method.finetune_epochs
    if finetune is None:
        finetune = trainer_epochs - grow - stabilize
        if finetune < 0:
            raise ConfigError(
                "method.finetune_epochs",
                None,
                f"an explicit number of epochs (grow_epochs + stabilize_epochs = {grow + stabilize} exceed "
                f"trainer.epochs={trainer_epochs})",
            )
    return PhaseEpochs(grow, stabilize, finetune)


def penalty_ceiling(reg: RegularizerConfig) -> float:
    """``regularizer.ceiling``, or seed 000's 2e-3 when it is null."""
    return DEFAULT_CEILING if reg.ceiling is None else reg.ceiling


def transform_optim(method: DLTHConfig, optim: OptimConfig) -> OptimConfig:
    """The optimizer recipe of the penalty phase: the run's, with ``transform_lr`` / ``transform_schedule``."""
    scheduler = optim.scheduler
    if method.transform_schedule is not None:
        scheduler = dataclasses.replace(scheduler, name=method.transform_schedule)
    return dataclasses.replace(optim, lr=method.transform_lr or optim.lr, scheduler=scheduler)


def transform_penalty(
    reg: RegularizerConfig,
    params: dict[str, torch.nn.Parameter],
    unimportant: Mask,
    *,
    grow_epochs: int,
    steps_per_epoch: int,
    start_step: int = 0,
) -> GrowingPenalty:
    """The penalty of a transform stage: on ``unimportant`` only, rising along the law over ``grow_epochs`` from
    ``start_step``, then held at the ceiling."""
    return GrowingPenalty(
        params,
        law=reg.name,
        ceiling=penalty_ceiling(reg),
        epochs=grow_epochs,
        start_step=start_step,
        steps_per_epoch=steps_per_epoch,
        selection=unimportant,
        granularity=reg.granularity,
        gradient_scale=reg.gradient_scale,
    )


def draw_unimportant(run: RunContext, candidates: Mask, kept: dict[str, int], cycle: int) -> Mask:
    """Per layer, a uniformly random set of ``candidates[name].sum() - kept[name]`` candidates (True = to be
    removed): the weights not chosen in an earlier cycle.

    Each layer draws from its own generator (run seed, ``"dlth"``, cycle, layer name), so the draw of a layer does
    not depend on which other layers are prunable."""
    chosen = {}
    for name, keep in candidates.items():
        survivors = torch.nonzero(keep.detach().reshape(-1).cpu()).flatten()
        count = survivors.numel() - kept[name]
        if not 0 <= count <= survivors.numel():
            raise ValueError(f"cannot keep {kept[name]} of the {survivors.numel()} survivors of {name}")
        order = torch.randperm(survivors.numel(), generator=run.generator("dlth", cycle, name))
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[survivors[order[:count]]] = True
        chosen[name] = flat.view(keep.shape).to(keep.device)
    return Mask(chosen)


def remove(alive: Mask, unimportant: Mask) -> Mask:
    """The mask after removing ``unimportant`` from ``alive``."""
    return Mask({name: keep & ~unimportant[name].to(keep.device) for name, keep in alive.items()})


def union(a: Mask, b: Mask) -> Mask:
    return Mask({name: keep | b[name].to(keep.device) for name, keep in a.items()})


class SaveOptimizerAtEnd:
    """Hook: save the optimizer state when the stage reaches its last epoch (a fine-tune that continues it)."""

    def __init__(self, run: RunContext, name: str) -> None:
        self.run, self.name = run, name

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if trainer.epoch >= trainer.stage.epochs:
            self.run.save_state_tensors(self.name, trainer.optimizer.state_dict())


# ------------------------------------------------------------------------------------------------ the method
@dataclasses.dataclass(frozen=True)
class _Names:
    transform: str
    finetune: str
    unimportant: str
    mask: str
    transform_round: int
    round: int


def _names(iterative: bool, cycle: int) -> _Names:
    if not iterative:
        return _Names("transform/dense", "finetune/ticket", "dlth_unimportant", "round_01", 0, 1)
    # The transform of cycle c trains the network of round c - 1 (its density); the fine-tune that of round c.
    return _Names(
        f"cycle{cycle:02d}/transform",
        f"cycle{cycle:02d}/finetune",
        f"dlth_unimportant_{cycle:02d}",
        f"round_{cycle:02d}",
        cycle - 1,
        cycle,
    )


def random_sparse_transformation(run: RunContext, *, iterative: bool) -> Summary:
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, DLTHConfig)
    reg, sparsity = cfg.regularizer, cfg.sparsity
    epochs = resolve_epochs(method, cfg.trainer.epochs)
    densities = (
        round_densities(sparsity.target, schedule=sparsity.schedule, rounds=sparsity.rounds, rate=sparsity.rate)
        if iterative
        else [remaining_fraction(sparsity.target)]
    )
    cycles = len(densities)
    ceiling = penalty_ceiling(reg)
    phase_optim = transform_optim(method, cfg.optim)
    transform_steps = run.data.num_train_batches(method.transform_batch_size)

    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    layer_counts = {name: round_counts(p.numel(), densities) for name, p in params.items()}
    alive = Mask.ones_like(params)
    chosen = Mask({n: torch.zeros_like(m) for n, m in alive.items()})  # every set drawn so far
    enforcer = MaskEnforcer(params, alive)
    run.log_start(total, densities=densities, regularizer=reg.name, ceiling=ceiling)
    run.message(
        f"{method.name}: {cycles} cycle(s) of {reg.name} penalty to {ceiling:g} on a random set "
        f"({epochs.grow} epochs rising, {epochs.stabilize} held), removal, {epochs.finetune} fine-tune epochs"
    )

    section: dict[str, Any] = {
        "ceiling": ceiling,
        "ceiling_source": "regularizer.ceiling" if reg.ceiling is not None else "default (seed 000: 2e-3)",
        "law": reg.name,
        "granularity": reg.granularity,
        "gradient_scale": reg.gradient_scale,
        "grow_epochs": epochs.grow,
        "stabilize_epochs": epochs.stabilize,
        "finetune_epochs": epochs.finetune,
        "finetune_restart": method.finetune_restart,
        "transform_lr": phase_optim.lr,
        "transform_schedule": phase_optim.scheduler.name,
        "transform_batch_size": method.transform_batch_size or cfg.trainer.batch_size,
        "zero_between_cycles": method.zero_between_cycles or not iterative,
        "finetune_between_cycles": method.finetune_between_cycles or not iterative,
        "selection": "uniformly random per layer",
        "cycles": cycles,
        "per_cycle_rate": 1.0 - remaining_fraction(sparsity.target) ** (1.0 / cycles),
        "per_cycle": [],
    }
    results: list[StageResult] = []
    rounds = []
    # Weights of the last finished stage stay on disk until the next stage has finished (a stage resumed before its
    # first checkpoint starts from them).
    previous_key: str | None = None
    last: StageResult | None = None
    continue_schedule = not method.finetune_restart and epochs.finetune > 0

    def summarise(complete: bool, controls: dict | None = None) -> Summary:
        kept = alive.num_kept()
        return run.write_summary(total, results=results, final=last, kept=kept, round_index=rounds[-1].round,
                                 rounds=rounds, controls=controls, details={"dlth": section},
                                 complete=complete)  # fmt: skip

    for cycle in range(1, cycles + 1):
        names = _names(iterative, cycle)
        final_cycle = cycle == cycles
        zero = final_cycle or method.zero_between_cycles or not iterative
        finetune = final_cycle or method.finetune_between_cycles or not iterative
        kept = {name: counts[cycle - 1] for name, counts in layer_counts.items()}
        candidates = Mask({n: ~c for n, c in chosen.items()})
        fresh = run.mask(names.unimportant, lambda: draw_unimportant(run, candidates, kept, cycle))  # noqa: B023
        chosen = union(chosen, fresh)
        penalised = fresh if method.zero_between_cycles or not iterative else chosen
        # the schedule runs on into this cycle's fine-tune only when the cycle has one
        continues = continue_schedule and zero and finetune

        # ------------------------------------------------------------ transform: growing penalty on the set
        schedule = epochs.transform + epochs.finetune if continues else epochs.transform
        penalty = transform_penalty(reg, params, penalised, grow_epochs=epochs.grow, steps_per_epoch=transform_steps)
        optimizer_name = f"{names.transform.replace('/', '_')}.optimizer"
        hooks: list[Any] = [penalty] + ([SaveOptimizerAtEnd(run, optimizer_name)] if continues else [])
        enforcer.set_mask(alive)
        transform = run.train(
            Stage(
                names.transform,
                names.transform_round,
                "transform",
                epochs.transform,
                schedule_epochs=schedule,
                density=alive.density(),
                batch_size=method.transform_batch_size,
            ),
            model,
            enforcer,
            hooks,
            keep_weights=True,
            optim=phase_optim,
        )
        results.append(transform)
        if previous_key is not None:
            run.release_weights(previous_key)
        previous_key = transform.key
        if cycle == 1:
            rounds.append(round_summary(0, total, total, transform))
            last = transform
        summarise(complete=False)
        cycle_record = {"cycle": cycle, "drawn": fresh.num_kept(), "transform": dataclasses.asdict(
            StageSummary.of(transform))}  # fmt: skip
        if not zero:
            section["per_cycle"].append(cycle_record)
            continue

        # ------------------------------------------------------------ removal
        removed = chosen if not method.zero_between_cycles and iterative else fresh
        removal = remove(alive, removed)
        removal_count = alive.num_kept() - removal.num_kept()
        mask = run.mask(names.mask, lambda: removal, round=names.round, removed=removal_count)  # noqa: B023
        enforcer.set_mask(mask)
        alive = mask

        # ------------------------------------------------------------ fine-tuning (or one evaluation)
        if finetune and epochs.finetune > 0:
            if continues:
                stage = Stage(
                    names.finetune,
                    names.round,
                    "finetune",
                    epochs.transform + epochs.finetune,
                    start_step=epochs.transform * transform_steps,
                    schedule_epochs=schedule,
                    density=mask.density(),
                )
                optimizer_state = run.load_state_tensors(optimizer_name)
            else:
                stage = Stage(names.finetune, names.round, "finetune", epochs.finetune, density=mask.density())
                optimizer_state = None
            last = run.train(stage, model, enforcer, keep_weights=not final_cycle, optimizer_state=optimizer_state)
            results.append(last)
            run.release_weights(previous_key)
            previous_key = last.key
            if continues and distributed.is_main():
                (run.output_dir / "checkpoints" / f"{optimizer_name}.pt").unlink(missing_ok=True)
        else:
            enforcer.apply_to_weights()
            last = run.evaluate(model, names.finetune, names.round, density=mask.density())
        controls = {}
        if final_cycle:
            controls = controls_from_init(
                run, round_index=names.round, mask=mask, model=model, enforcer=enforcer, init_state=init_state,
                results=results,
            )  # fmt: skip
        rounds.append(round_summary(names.round, mask.num_kept(), total, last, controls))
        section["per_cycle"].append(
            {
                **cycle_record,
                "kept": mask.num_kept(),
                "density": mask.density(),
                "pruned_fraction": 1.0 - mask.density(),
                "removed": removed.num_kept(),
                "after_removal": dataclasses.asdict(StageSummary.of(last)),  # the fine-tune, or one evaluation
            }
        )
        summary = summarise(complete=final_cycle, controls=controls)
    return summary
