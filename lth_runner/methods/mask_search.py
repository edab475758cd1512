"""Mask search on frozen weights: edge-popup and SR-popup (Lottery Jackpots).

**edge-popup** (Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?", Alg. 1): every
prunable weight gets a score, initialised Kaiming-uniform (``a = sqrt(5)``, as allenai/hidden-networks); the forward
pass uses the weights whose ``|score|`` is in the top ``k`` of their layer, the backward pass reaches the scores
straight through (:mod:`lth_runner.sparse.score_mask`), and only the scores train. ``sparsity.target`` is always the
pruned fraction (the reference calls the *kept* fraction ``prune_rate`` in its CIFAR configs).

**SR-popup** (Zhang et al., "Lottery Jackpots Exist in Pre-trained Models", paper 004, Alg. 1): on a pre-trained
network, per-layer budgets from one global magnitude threshold (``layer_budget=global_magnitude``; the classifier
dense with ``dense_classifier=true``); a relaxed mask ``m`` initialised from magnitude (Eq. 8: 1 for the kept
entries, ``eta = 0.99`` for the pruned); forward ``w * b`` (Eq. 27), straight-through gradient to ``m`` (Eq. 6), and
after every optimizer step the short restriction (Eqs. 28-30): per layer, with ``thr`` the value between kept and
pruned (Eq. 28's "K-th largest" read as that threshold, which the reference code computes), the candidates
``Psi* = {pruned, m > thr}`` and ``Phi* = {kept, m <= thr}``; the ``q_t`` largest of ``Psi*`` revive and the ``q_t``
smallest of ``Phi*`` are pruned, ``q_t = ceil(|Psi*| * f(t))`` with ``f = (1 - t/t_f)^4`` per iteration (Eq. 29,
``swap_schedule=poly4``). Other schedules are options: ``inverse`` (Eq. 32's ``(t/t_f)^4``), ``cosine`` (the
ImageNet script's), ``constant`` (``swap_fraction``), ``none`` (every candidate swaps: the "w/o restriction" row,
edge-popup from magnitude), and ``reference_epoch``: the reference CIFAR script's ``ceil((1 - epoch/E)^4)``, which is
1 for every epoch and so never restricts (it behaves as ``none``; kept so both can be compared).

Choices where the papers or code leave room (docs/methods.md has the table):
- The mask is an ordinary :class:`~lth_runner.sparse.Mask` over the prunable weights of the ``sparsity`` group
  (minus the classifier with ``dense_classifier``), saved as ``masks/search.pt``; every other method can load it.
- The overlap with the magnitude mask of the same weights with the same per-layer counts (paper 004 Table 6) is
  reported for every search (``details.search.overlap_with_magnitude``, before and after): the fraction of the kept
  weights both masks keep. Eq. 7's ``1 - ||m1 - m2||_1 / k`` leaves ``k`` open; with ``k`` the kept count it is
  ``2 * overlap - 1`` for equal counts, with ``k`` all entries ``1 - 2 (1 - overlap) * density``
  (:meth:`Mask.overlap` computes both; ``lth-run-masks`` prints them).
- Weights, biases and BN affine parameters are frozen (the reference freezes every module with a weight); BN running
  statistics update (``bn_stats=update``, the reference trains in train mode) unless ``bn_stats=frozen``.
- ``optim.*`` applies to the scores (weight decay included, as in both references).
- ``finetune_epochs > 0`` afterwards trains the found subnetwork's weights at the fixed mask (paper 004 Fig. 8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lth_runner.config.schema import MaskSearchConfig
from lth_runner.methods.controls import controls_from_init
from lth_runner.models import pretrained
from lth_runner.session import RunContext
from lth_runner.sparse import (
    CRITERIA,
    Mask,
    MaskEnforcer,
    kept_count,
    prunable_parameters,
    prune_to_density,
    select_top,
    unwrap,
)
from lth_runner.sparse.schedule import remaining_fraction
from lth_runner.sparse.score_mask import ReselectTopK, ScoreMaskedModel
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import Stage, StageResult

SEARCH_KEY = "search/scores"
FINETUNE_KEY = "finetune/ticket"
MASK_NAME = "search"


# ---------------------------------------------------------------------------------------------- schedules
def poly4(t: float, total: float, cfg: MaskSearchConfig) -> float:
    """Paper 004 Eq. 29: ``(1 - t/t_f)^p`` of the candidates swap at iteration ``t`` (p = 4)."""
    return max(0.0, 1.0 - t / total) ** cfg.swap_power


def inverse(t: float, total: float, cfg: MaskSearchConfig) -> float:
    """Paper 004 Eq. 32 (an ablation): ``(t/t_f)^p``."""
    return min(1.0, t / total) ** cfg.swap_power


def cosine(t: float, total: float, cfg: MaskSearchConfig) -> float:
    """The reference ImageNet script: ``0.5 (1 + cos(pi t / t_f))``."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / total)))


def constant(t: float, total: float, cfg: MaskSearchConfig) -> float:
    return cfg.swap_fraction


def none(t: float, total: float, cfg: MaskSearchConfig) -> float:
    """No restriction: every candidate swaps (the new mask is the top-k of ``m``)."""
    return 1.0


def reference_epoch(t: float, total: float, cfg: MaskSearchConfig, *, steps_per_epoch: int = 1) -> float:
    """zyxxmu/lottery-jackpots cifar.py: ``ceil((1 - epoch/E)^4)``, 1 for every epoch < E."""
    epochs = total / steps_per_epoch
    return float(math.ceil((1.0 - (t // steps_per_epoch) / epochs) ** 4))


SWAP_SCHEDULES: dict[str, Callable[..., float]] = {
    "poly4": poly4,
    "inverse": inverse,
    "cosine": cosine,
    "constant": constant,
    "none": none,
    "reference_epoch": reference_epoch,
}


def swap_count(candidates: int, fraction: float) -> int:
    """``q_t = ceil(|Psi*| * f(t))`` (Eq. 29), never more than the candidates."""
    return min(candidates, math.ceil(candidates * fraction - 1e-9))


# ---------------------------------------------------------------------------------------- the restriction
@torch.no_grad()
def restricted_swap(m: torch.Tensor, keep: torch.Tensor, fraction: float) -> tuple[torch.Tensor, int, int]:
    """One layer's short restriction (paper 004 Eqs. 28-30): returns the new keep-mask, the number of swaps and
    the number of candidates ``|Psi*|``. The kept count never changes."""
    flat_m, flat_keep = m.reshape(-1), keep.reshape(-1)
    pruned = int((~flat_keep).sum())
    if pruned == 0 or pruned == flat_m.numel():
        return keep, 0, 0
    threshold = flat_m.kthvalue(pruned).values  # the largest value that would be pruned by a fresh top-k
    revive = torch.nonzero(~flat_keep & (flat_m > threshold)).flatten()  # Psi*
    drop = torch.nonzero(flat_keep & (flat_m <= threshold)).flatten()  # Phi*
    q = min(swap_count(revive.numel(), fraction), drop.numel())
    if q == 0:
        return keep, 0, revive.numel()
    up = revive[torch.topk(flat_m[revive], q, largest=True, sorted=False).indices]
    down = drop[torch.topk(flat_m[drop], q, largest=False, sorted=False).indices]
    new = flat_keep.clone()
    new[up], new[down] = True, False
    return new.view_as(keep), q, revive.numel()


class RestrictedSwap:
    """Trainer hook: after every optimizer step, SR-popup's restricted swap in every layer."""

    def __init__(self, wrapper: ScoreMaskedModel, cfg: MaskSearchConfig, total_steps: int, steps_per_epoch: int):
        self.wrapper, self.cfg, self.total = wrapper, cfg, max(1, total_steps)
        schedule = SWAP_SCHEDULES[cfg.swap_schedule]
        if cfg.swap_schedule == "reference_epoch":
            self.fraction = lambda t: schedule(t, self.total, cfg, steps_per_epoch=steps_per_epoch)
        else:
            self.fraction = lambda t: schedule(t, self.total, cfg)
        # counted in the wrapper's state, so checkpoints and the saved search weights carry it
        if not hasattr(wrapper, "swaps"):
            wrapper.register_buffer("swaps", torch.zeros((), dtype=torch.long))

    @property
    def swaps(self) -> int:
        return int(self.wrapper.swaps)

    def after_step(self, trainer: Any) -> None:
        fraction = self.fraction(trainer.step - trainer.stage.start_step)
        ranked = self.wrapper.ranked()
        new = {}
        for name in self.wrapper.names:
            new[name], q, _ = restricted_swap(ranked[name], self.wrapper.keep(name), fraction)
            self.wrapper.swaps += q
        self.wrapper.set_keep(new)


# ------------------------------------------------------------------------------------------------ budgets
def layer_budget(weights: Mapping[str, torch.Tensor], density: float, budget: str) -> int | dict[str, int]:
    """Kept counts: ``uniform`` (every layer at ``density``), ``global`` (one count over all layers, the scores
    compete), ``global_magnitude`` (per layer, what one global |w| threshold keeps: paper 004's budgets)."""
    if budget == "uniform":
        return {n: kept_count(w.numel(), density) for n, w in weights.items()}
    if budget == "global":
        return kept_count(sum(w.numel() for w in weights.values()), density)
    if budget == "global_magnitude":
        mask = prune_to_density({n: w.detach().abs() for n, w in weights.items()}, density, scope="global")
        return {n: int(mask[n].sum()) for n in weights}
    raise ValueError(f"unknown layer budget {budget!r}")


def select_with_budget(scores: Mapping[str, torch.Tensor], kept: int | Mapping[str, int]) -> Mask:
    if isinstance(kept, int):
        return select_top(scores, kept)
    return Mask({n: select_top({n: scores[n]}, kept[n])[n] for n in scores})


# ---------------------------------------------------------------------------------------------- weights
@torch.no_grad()
def reinitialise(weights: Mapping[str, nn.Parameter], how: str, generator: torch.Generator) -> None:
    """Ramanujan et al. Sec. 4.1's weight distributions: Kaiming normal, or the signed Kaiming constant
    ``+-sqrt(2 / fan_in)`` (the sign drawn at random)."""
    for weight in weights.values():
        fan_in = weight[0].numel()
        std = math.sqrt(2.0 / fan_in)
        if how == "kaiming_normal":
            weight.copy_(torch.randn(weight.shape, generator=generator).to(weight) * std)
        elif how == "signed_constant":
            signs = torch.randint(0, 2, weight.shape, generator=generator).to(weight) * 2 - 1
            weight.copy_(signs * std)


def kaiming_uniform_scores(weights: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """allenai/hidden-networks: ``kaiming_uniform_(scores, a=sqrt(5))``, i.e. U(-b, b) with b = 1/sqrt(fan_in)."""
    out = {}
    for name, weight in weights.items():
        bound = 1.0 / math.sqrt(weight[0].numel())
        out[name] = (torch.rand(weight.shape, generator=generator) * 2 - 1).to(weight) * bound
    return out


def searched_parameters(run: RunContext, model: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable tensors of the ``sparsity`` group, without the model's classifier when
    ``method.dense_classifier`` (a classifier that ``sparsity.exclude_last`` already left out is not counted twice)."""
    params = run.prunable(model)
    if run.cfg.method.dense_classifier:
        classifier = list(prunable_parameters(model))[-1]
        if classifier in params and len(params) > 1:
            params = {n: p for n, p in params.items() if n != classifier}
    return params


# ------------------------------------------------------------------------------------------------ methods
def edge_popup(run: RunContext) -> Summary:
    """Edge-popup: the top-k |score| of every layer, scores trained straight through, weights frozen."""
    return search(run, rank_by="abs")


def sr_popup(run: RunContext) -> Summary:
    """SR-popup (Lottery Jackpots): magnitude-initialised relaxed mask with the short restriction."""
    return search(run, rank_by="value")


def search(run: RunContext, *, rank_by: str) -> Summary:
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, MaskSearchConfig)
    epochs = method.search_epochs or cfg.trainer.epochs
    density = remaining_fraction(cfg.sparsity.target)
    model = run.new_model("init")
    params = searched_parameters(run, model)
    total = sum(p.numel() for p in params.values())
    run.log_start(total, densities=[density], rank_by=rank_by)
    if method.pretrained is None and method.weight_init != "model":
        reinitialise(params, method.weight_init, run.generator("weight_init"))
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}  # the controls' start

    results: list[StageResult] = []
    source: dict[str, Any] = {"source": "initialisation", "weight_init": method.weight_init}
    if method.pretrained is not None:
        got = pretrained.obtain(run, model, epochs=method.pretrain_epochs or cfg.trainer.epochs)
        source = {"source": got.source, "source_kind": got.kind, "source_accuracy": got.accuracy}
        if got.stage is not None:
            results.append(got.stage)
        run.message(f"{method.name}: searching the weights from {got.source} ({got.kind})")
    start = run.evaluate(model, "start/evaluate", 0)
    rounds = [round_summary(0, total, total, start)]

    found, mask, wrapper, section = popup(
        run, model, params, density, key=SEARCH_KEY, round_index=1, mask_name=MASK_NAME, rank_by=rank_by, epochs=epochs
    )
    results.append(found)
    section = {**source, **section}

    final = found
    enforcer = MaskEnforcer(params, mask)
    wrapper.release()  # the search is over: the fine-tune and the controls train weights
    if method.finetune_epochs > 0:
        wrapper.export()
        final = run.train(
            Stage(FINETUNE_KEY, 1, "ticket", method.finetune_epochs, density=mask.density()), model, enforcer
        )
        results.append(final)
    controls = controls_from_init(
        run, round_index=1, mask=mask, model=model, enforcer=enforcer, init_state=init_state, results=results
    )
    rounds.append(round_summary(1, mask.num_kept(), total, final, controls))
    return run.write_summary(total, results=results, final=final, kept=mask.num_kept(), round_index=1,
                             rounds=rounds, controls=controls, details={"search": section}, complete=True)  # fmt: skip


def popup(
    run: RunContext,
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    density: float,
    *,
    key: str,
    round_index: int,
    mask_name: str,
    rank_by: str,
    epochs: int,
) -> tuple[StageResult, Mask, ScoreMaskedModel, dict[str, Any]]:
    """One mask search on ``model``'s frozen weights at ``density``: budgets, initial scores, the score-masked
    stage ``key`` (edge-popup's re-selection or SR-popup's restriction after every step), the saved mask
    ``mask_name`` and what to report about it."""
    method = run.cfg.method
    kept = layer_budget(params, density, method.layer_budget)
    magnitude = select_with_budget({n: p.detach().abs() for n, p in params.items()}, kept)
    scores, first = _initial_scores(run, model, params, kept, rank_by)
    wrapper = ScoreMaskedModel(
        model, scores, kept, rank_by=rank_by, train=tuple(method.train), bn_stats=method.bn_stats
    )
    if first is not None:
        wrapper.set_keep(first)
    section: dict[str, Any] = {
        "rank_by": rank_by,
        "score_init": method.score_init,
        "layer_budget": method.layer_budget,
        "search_epochs": epochs,
        "swap_schedule": method.swap_schedule if rank_by == "value" else None,
        "overlap_with_magnitude": {"start": wrapper.mask().kept_overlap(magnitude)},
    }
    start = run.evaluate(wrapper, f"{key}/start", round_index, density=wrapper.mask().density())
    section["start"] = {"val_acc": start.best_val_acc, "test_acc": start.test_acc}  # the first mask, unsearched
    steps_per_epoch = run.data.num_train_batches()
    hook: Any = (
        RestrictedSwap(wrapper, method, epochs * steps_per_epoch, steps_per_epoch)
        if rank_by == "value"
        else ReselectTopK(wrapper)
    )
    found = run.train(
        Stage(key, round_index, "search", epochs, density=wrapper.mask().density()),
        wrapper,
        None,
        [hook],
        keep_weights=True,
    )
    mask = run.mask(mask_name, wrapper.mask, round=round_index, searched=True)
    if isinstance(kept, int):  # a global count: compare with magnitude at the per-layer counts the search chose
        magnitude = select_with_budget({n: p.detach().abs() for n, p in params.items()}, mask.layer_kept())
    section["layer_kept"] = mask.layer_kept()
    section["overlap_with_magnitude"]["end"] = mask.kept_overlap(magnitude)
    if rank_by == "value":
        section["swaps"] = hook.swaps
    return found, mask, wrapper, section


def _initial_scores(
    run: RunContext, model: nn.Module, params: Mapping[str, nn.Parameter], kept: int | Mapping[str, int], rank_by: str
) -> tuple[dict[str, torch.Tensor], Mask | None]:
    """The scores the search starts from, and (SR-popup) the first mask.

    edge-popup (``rank_by="abs"``): Kaiming-uniform scores, or a criterion's scores. SR-popup (``"value"``): the
    relaxed mask of Eq. 8, 1 on the entries the criterion keeps within the budget and ``eta`` on the others;
    ``score_init=random`` draws ``m ~ U[0, 1]`` as paper 004's Table 7."""
    method = run.cfg.method
    generator = run.generator("scores")
    if method.score_init == "kaiming_uniform":
        scores = kaiming_uniform_scores(params, generator)
        return scores, None
    if rank_by == "value" and method.score_init == "random":
        scores = {n: torch.rand(p.shape, generator=generator).to(p) for n, p in params.items()}
        return scores, None
    ranked = CRITERIA.get(method.score_init)(
        {n: p.detach() for n, p in params.items()}, run.criterion_context(model, "score_init")
    )
    if rank_by == "abs":
        return {n: s.detach().clone() for n, s in ranked.items()}, None
    first = select_with_budget(ranked, kept)
    relaxed = {n: torch.where(first[n], 1.0, method.eta).to(params[n]) for n in params}
    return relaxed, first
