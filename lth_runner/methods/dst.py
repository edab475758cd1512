"""Dynamic sparse training: SET (Mocanu et al., Nature Communications 2018) and RigL (Evci et al., ICML 2020), the
sparse-from-scratch baselines of paper 004 (Tables 1-4).

Both train a sparse network from step 0 and never a dense one (RigL Algorithm 1):

1. start from a random mask with the target density spread over the layers by ``method.distribution``
   (``erk`` by default, RigL's best; ``uniform``), exactly ``kept_count(numel, density_l)`` weights per layer
   (``masks/initial.pt``);
2. train ``method.train_epochs`` (null: ``trainer.epochs``); every ``method.delta_t`` steps while
   ``t < T_end = method.t_end * total steps``, every layer drops ``floor(f(t) * active)`` connections of smallest
   ``|w|`` and grows as many, ``f(t) = alpha/2 (1 + cos(pi t / T_end))`` (``method.decay=constant``: ``alpha``);
   SET grows uniformly at random, RigL by the largest ``|dL/dw|`` of the dense gradient of that step's batch;
   grown connections start at zero with no optimizer state;
3. the masks of every ``method.save_every``-th update and of the last one are saved (``masks/update_XXXX.pt``),
   the delivered network's as ``masks/final.pt``; every update is a ``mask_update`` record of metrics.jsonl
   (fraction, connections changed, new ones, per layer).

Choices where the papers leave room (docs/methods.md): the update replaces that step's weight update
(``method.update_replaces_step``, RigL Algorithm 1 and its code); a just-dropped connection may be regrown and then
keeps its weight (the reference code); SET uses RigL's schedule, as RigL's paper does for its SET baseline (SET's
own paper updates once per epoch with a constant fraction: ``method.delta_t=<steps per epoch>
method.decay=constant``); drop and grow are per layer, so the per-layer counts never change; ``method.t_end=0``
(no update) is the static sparse baseline of RigL's paper. Epochs before the last update are not candidates for
best-validation selection (their mask is not the delivered one).
"""

from __future__ import annotations

from typing import Any

from lth_runner import distributed
from lth_runner.config.schema import DSTConfig
from lth_runner.errors import UserError
from lth_runner.methods.controls import controls_from_init
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, MaskEnforcer, remaining_fraction, unwrap
from lth_runner.sparse.dst import layer_densities
from lth_runner.summary import Summary, round_summary
from lth_runner.training.drop_and_grow import DropAndGrow
from lth_runner.training.trainer import Stage

TRAIN_KEY = "round01/sparse"


def dynamic_sparse_training(run: RunContext) -> Summary:
    """``method=set`` and ``method=rigl`` (``method.grow``: random or gradient): train a sparse network whose mask
    changes by drop-and-grow (the module docstring's steps 1-3)."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, DSTConfig)
    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    shapes = {name: p.shape for name, p in params.items()}
    densities = layer_densities(
        shapes, remaining_fraction(cfg.sparsity.target), method.distribution, method.erk_power_scale
    )
    run.log_start(total, densities=[remaining_fraction(cfg.sparsity.target)], grow=method.grow)

    def random_topology() -> Mask:
        return Mask.random(shapes, densities, generator=run.generator("dst", "initial"), device=run.device)

    initial = run.mask("initial", random_topology, round=1, distribution=method.distribution)
    enforcer = MaskEnforcer(params, initial)
    epochs = method.train_epochs or cfg.trainer.epochs

    def on_update(index: int, step: int, mask: Mask, record: dict[str, Any]) -> None:
        if index % method.save_every == 0 or index == schedule.num_updates:
            if distributed.is_main():
                mask.save(run.mask_path(f"update_{index:04d}"))
        run.tracker.log("mask_update", key=TRAIN_KEY, update=index, step=step, kept=mask.num_kept(), **record)

    hook = DropAndGrow(
        enforcer,
        grow=method.grow,
        delta_t=method.delta_t,
        alpha=method.alpha,
        t_end=method.t_end,
        decay=method.decay,
        replaces_step=method.update_replaces_step,
        seed=cfg.seed,
        on_update=on_update,
    )
    schedule = hook.schedule_for(epochs * run.data.num_train_batches())
    stage = Stage(TRAIN_KEY, 1, "ticket", epochs, density=initial.density())
    result = run.train(stage, model, enforcer, [hook], keep_weights=True)

    def delivered() -> Mask:  # the mask after the last update; saved by an earlier attempt that trained the stage
        if hook.schedule is not None or schedule.num_updates == 0:  # trained here, or never updated
            return hook.mask
        last = f"update_{schedule.num_updates:04d}"
        saved = run.saved_mask(last)
        if saved is None:
            raise UserError(
                f"{run.mask_path(last)} is missing; the run directory is incomplete (remove it to start over)"
            )
        return saved

    final = run.mask("final", delivered)
    enforcer.set_mask(final)
    results = [result]
    controls = controls_from_init(
        run, round_index=1, mask=final, model=model, enforcer=enforcer, init_state=init_state, results=results
    )
    section = {
        "grow": method.grow,
        "distribution": method.distribution,
        "layer_densities": final.layer_densities(),
        "delta_t": method.delta_t,
        "alpha": method.alpha,
        "decay": method.decay,
        "t_end": method.t_end,
        "end_step": schedule.end_step,
        "updates": schedule.num_updates,
        "update_replaces_step": method.update_replaces_step,
        "initial_overlap": _overlap(initial, final),
    }
    rounds = [round_summary(1, final.num_kept(), total, result, controls)]
    return run.write_summary(total, results=results, final=result, kept=final.num_kept(), round_index=1,
                             rounds=rounds, controls=controls, details={"dst": section}, complete=True)  # fmt: skip


def _overlap(a: Mask, b: Mask) -> float:
    """Fraction of ``b``'s kept weights that ``a`` keeps too (1.0: the topology never moved)."""
    shared = sum(int((a[name] & keep).sum()) for name, keep in b.items())
    return shared / max(b.num_kept(), 1)
