"""Prune a pre-trained network once, then fine-tune: the pipeline shared by ``method=l1`` (Li et al. 2017) and
``method=obd`` (LeCun et al. 1989), which differ only in how the mask is computed.

1. pre-train: train the dense network in this run (stage ``pretrain/dense``, ``trainer.epochs`` epochs), or load
   weights with ``pretrained`` (:func:`lth_runner.models.pretrained.obtain`);
2. evaluate the dense network, prune once (mask ``masks/<name>.pt``, read back on resume), evaluate the pruned one;
3. fine-tune the masked weights (stage ``finetune/ticket``) with a fresh optimizer at ``optim.lr * lr_scale``;
   with ``finetune_epochs=0`` the pruned network is what is delivered.

The summary's ``details`` hold one section ``<name>``: the weights' source, the method's own fields, the fine-tuning
settings, the dense and pruned accuracies and what ``describe(mask)`` adds. With the same seed and configuration,
the in-run pre-training trains exactly as LTH's ``round00/dense`` (same initialisation labels and seeds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from lth_runner.config.schema import OneShotConfig
from lth_runner.methods.controls import controls_from_init
from lth_runner.models import pretrained as pretrained_weights
from lth_runner.models.pretrained import PRETRAIN_KEY
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, MaskEnforcer, unwrap
from lth_runner.sparse.schedule import remaining_fraction
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import Stage, StageResult

FINETUNE_KEY = "finetune/ticket"

Prune = Callable[[nn.Module, Mapping[str, nn.Parameter]], Mask]


@dataclasses.dataclass
class OneShot:
    """What a prune-once-and-fine-tune method chooses besides its :class:`OneShotConfig` (``method.pretrained``,
    ``finetune_epochs``, ``finetune_lr_scale``). ``prune(model, params)`` computes the mask of the pre-trained
    ``model``; ``fields`` come first in the summary section (after the source) and in the prune event; ``describe``
    adds mask statistics to the section; ``prepare(model, params)`` runs once the weights are there."""

    name: str
    prune: Prune
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    event: dict[str, Any] = dataclasses.field(default_factory=dict)
    describe: Callable[[Mask], dict[str, Any]] | None = None
    prepare: Callable[[nn.Module, Mapping[str, nn.Parameter]], None] | None = None


def prune_once_and_finetune(run: RunContext, spec: OneShot) -> Summary:
    """Pre-train (or load), prune once by ``spec.prune`` to ``sparsity.target``, fine-tune."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, OneShotConfig)
    finetune_epochs = cfg.trainer.epochs if method.finetune_epochs is None else method.finetune_epochs
    finetune_optim = dataclasses.replace(cfg.optim, lr=cfg.optim.lr * method.finetune_lr_scale)

    model = run.new_model("init")  # the labels LTH uses, so an in-run pre-training equals LTH's round 0
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    run.log_start(total, densities=[remaining_fraction(cfg.sparsity.target)])
    loaded = pretrained_weights.obtain(run, model, epochs=cfg.trainer.epochs) if method.pretrained is not None else None
    if loaded is not None:
        run.message(f"{spec.name}: pre-trained weights from {loaded.source} ({loaded.kind})")
    if spec.prepare is not None:
        spec.prepare(model, params)

    results: list[StageResult] = []
    if loaded is None:
        dense = run.train(Stage(PRETRAIN_KEY, 0, "dense", cfg.trainer.epochs), model, None, keep_weights=True)
        results.append(dense)
        source: dict[str, Any] = {"source": PRETRAIN_KEY, "source_kind": "in_run"}
    else:
        source = {"source": loaded.source, "source_kind": loaded.kind}
        if loaded.stage is not None:
            results.append(loaded.stage)
    evaluated = run.evaluate(model, "pretrained/evaluate", 0)
    rounds = [round_summary(0, total, total, results[0] if results else evaluated)]
    section: dict[str, Any] = {
        **source,
        **spec.fields,
        "finetune_epochs": finetune_epochs,
        "finetune_lr": finetune_optim.lr,
        "pretrained": {"val_acc": evaluated.best_val_acc, "test_acc": evaluated.final_test_acc},
    }
    run.write_summary(total, results=results, final=rounds[0].ticket, kept=total, round_index=0, rounds=rounds,
                      details={spec.name: section}, complete=False)  # fmt: skip

    mask = run.mask(spec.name, lambda: spec.prune(model, params), round=1, **spec.event)
    if spec.describe is not None:
        section.update(spec.describe(mask))
    enforcer = MaskEnforcer(params, mask)
    enforcer.apply_to_weights()
    pruned = run.evaluate(model, "pruned/evaluate", 1, density=mask.density())
    section["pruned"] = {"val_acc": pruned.best_val_acc, "test_acc": pruned.final_test_acc}

    if finetune_epochs > 0:
        final = run.train(
            Stage(FINETUNE_KEY, 1, "ticket", finetune_epochs, density=mask.density()),
            model,
            enforcer,
            optim=finetune_optim,
        )
        results.append(final)
    else:  # nothing fine-tuned: the pruned network is what is delivered
        final = pruned
    controls = controls_from_init(
        run, round_index=1, mask=mask, model=model, enforcer=enforcer, init_state=init_state, results=results
    )
    rounds.append(round_summary(1, mask.num_kept(), total, final, controls))
    return run.write_summary(total, results=results, final=final, kept=mask.num_kept(), round_index=1,
                             rounds=rounds, controls=controls, details={spec.name: section}, complete=True)  # fmt: skip
