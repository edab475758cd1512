"""OBD: Optimal Brain Damage (LeCun, Denker & Solla, NeurIPS 1989) as paper 004's baseline (Lottery Jackpots,
Table 1, "OBD ... conducts fine-training after pruning the pre-trained ResNet-32").

LeCun et al.'s procedure (Sec. 3): train the network, compute the second derivatives ``h_kk``, the saliencies
``s_k = h_kk u_k^2 / 2`` (Eq. 5), sort the parameters by saliency and delete the low ones, retrain. Here the
deletion happens once, to ``sparsity.target`` (OBD iterates delete-and-retrain; paper 004's row is a single
prune + fine-tune), on the pipeline of :mod:`lth_runner.methods.one_shot`:

1. pre-train the dense network (stage ``pretrain/dense``) or load ``method.pretrained``;
2. score by the ``obd`` criterion (:mod:`lth_runner.sparse.saliency`; ``sparsity.obd_hessian`` fisher or
   hutchinson, ``sparsity.obd_samples``, ``method.hessian_batches`` training batches: 8 by default, where the
   criterion's own default is ``sparsity.criterion_batches`` = 1, because one batch's empirical Fisher is too
   noisy to rank weights by, docs/results.md) and keep the highest
   saliencies, ``method.scope`` global by default (OBD sorts all parameters together); mask ``masks/obd.pt``;
3. fine-tune at ``optim.lr * method.finetune_lr_scale`` for ``method.finetune_epochs``.

The summary section ``obd`` holds the source, scope, estimator, sample count, the dense and pruned accuracies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from lth_runner.config.schema import OBDConfig
from lth_runner.methods.one_shot import OneShot, prune_once_and_finetune
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, prune_to_density, remaining_fraction, saliency
from lth_runner.summary import Summary

MASK_NAME = "obd"


def obd(run: RunContext) -> Summary:
    """Pre-train (or load), prune once by OBD saliency to the target, fine-tune."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, OBDConfig)
    sparsity = cfg.sparsity
    scope = method.scope or sparsity.scope
    batches = method.hessian_batches or sparsity.criterion_batches
    if sparsity.obd_hessian == "hutchinson":  # probes
        samples = sparsity.obd_samples or saliency.DEFAULT_PROBES
    else:  # examples: the criterion reads whole training batches
        samples = batches * cfg.trainer.batch_size
        samples = min(samples, sparsity.obd_samples or samples)

    def prune(model: nn.Module, params: Mapping[str, nn.Parameter]) -> Mask:
        weights = {n: p.detach() for n, p in params.items()}
        context = run.criterion_context(model, "obd")
        context = dataclasses.replace(context, options={**context.options, "criterion_batches": batches})
        scores = saliency.obd(weights, context)
        return prune_to_density(scores, remaining_fraction(sparsity.target), scope=scope)

    spec = OneShot(
        name=MASK_NAME,
        prune=prune,
        fields={
            "scope": scope,
            "hessian": sparsity.obd_hessian,
            "samples": samples,
            "hessian_batches": batches,
        },
        event={"criterion": "obd", "hessian": sparsity.obd_hessian},
        describe=lambda mask: {"weight_density": mask.density(), "layer_kept": mask.layer_kept()},
    )
    return prune_once_and_finetune(run, spec)
