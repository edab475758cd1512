"""L1: magnitude pruning of a pre-trained network, then fine-tuning (seed 000's "L1" baseline row).

Seed 000 lists "L1: L1 regularization pruning based on a pretrained network, Li et al. (2016)", i.e. Li, Kadav,
Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets" (ICLR 2017), Sec. 3.1: for every conv layer,
compute each filter's L1 norm ``s_j = sum |F_j|`` (over input channels x kernel height x width), remove the filters
with the smallest sums, then retrain ("prune once and retrain", Sec. 3.4). The method here:

1. pre-train: train the dense network in this run (stage ``pretrain/dense``, ``trainer.epochs`` epochs), or load
   weights with ``method.pretrained`` (a state-dict file, a dict with a ``model`` key such as ``checkpoints/last.pt``,
   a run directory of this tool, ``auto`` for the dense model trained once and cached under the data root, or
   ``timm:NAME``; :mod:`lth_runner.models.pretrained`);
2. prune once to ``sparsity.target`` (mask saved as ``masks/l1.pt`` and read back on resume);
3. fine-tune the masked pre-trained weights (stage ``finetune/ticket``) with a fresh optimizer at
   ``optim.lr * method.finetune_lr_scale``, the learning-rate schedule spanning the fine-tuning epochs (the
   pipeline, shared with ``method=obd``, is :mod:`lth_runner.methods.one_shot`).

Choices where the papers leave room (also in docs/methods.md):
- ``structure=weight`` (default) is unstructured magnitude pruning (|w|, the per-weight L1 norm) with
  ``method.scope`` (default ``layerwise``: Li et al. prune every layer on its own, and DLTH/GReg's ``--method L1
  --wg weight``, the most plausible source of the seed paper's unstructured L1 row, prunes per layer too; ``global``
  competes across layers; null follows ``sparsity.scope``).
- ``structure=filter`` is Li et al.'s criterion, always per layer (L1 norms of filters of different fan-in are not
  comparable): every prunable layer keeps ``max(1, kept_count(n_filters, 1 - target))`` output units with the
  largest L1 norms (ties keep the lower index). Linear layers are pruned by output neurons the same way, the
  classifier included unless excluded (``sparsity.exclude_last=true`` is advisable: a console message says so).
  Only the weights of removed filters are masked; biases, BatchNorm parameters and the next layer's matching input
  channels are left alone (the masks cover prunable weights only), so a removed filter outputs a constant and the
  weight density is ``sum(kept_filters * fan_in) / total`` rather than exactly ``1 - target``.
- The dense and the pruned (not yet fine-tuned) networks are evaluated once on the validation and test splits
  and reported in the ``l1`` summary section (Li et al. Fig. 2 compares pruning with and without retraining).
- With ``finetune_epochs=0`` the delivered network is the pruned one; its accuracies fill ``final``.
- With the same seed and configuration, the in-run pre-training stage trains exactly as LTH's ``round00/dense``
  (same initialisation labels, round and phase seeds), so an LTH run directory gives the same masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lth_runner.config.schema import L1Config
from lth_runner.methods.one_shot import OneShot, prune_once_and_finetune
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, kept_count, prunable_parameters, prune_to_density, select_top
from lth_runner.sparse.schedule import remaining_fraction
from lth_runner.summary import Summary

MASK_NAME = "l1"


# ------------------------------------------------------------------------------------------------ pruning
def filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of every output unit (filter of a conv, row of a linear layer): ``sum |w|`` over all other dims."""
    w = weight.detach().double().abs()
    return w.reshape(w.shape[0], -1).sum(dim=1)


def filter_mask(weights: Mapping[str, torch.Tensor], density: float) -> Mask:
    """Li et al. (2017): in every tensor keep the ``max(1, kept_count(n_filters, density))`` filters with the largest
    L1 norms (ties keep the lower index) and mask every weight of the others."""
    masks = {}
    for name, weight in weights.items():
        norms = filter_norms(weight)
        keep = max(1, kept_count(norms.numel(), density))
        rows = select_top({name: norms}, keep)[name]
        masks[name] = rows.view(-1, *([1] * (weight.dim() - 1))).expand(weight.shape).clone()
    return Mask(masks)


def weight_mask(weights: Mapping[str, torch.Tensor], density: float, scope: str) -> Mask:
    """Unstructured magnitude pruning: keep the largest |w| (per layer with ``scope="layerwise"``), exact counts."""
    return prune_to_density({n: w.detach().abs() for n, w in weights.items()}, density, scope=scope)


def l1_mask(weights: Mapping[str, torch.Tensor], target: float, *, structure: str, scope: str) -> Mask:
    """The L1 method's mask at sparsity ``target`` for ``structure`` ``weight`` or ``filter``."""
    density = remaining_fraction(target)
    if structure == "filter":
        return filter_mask(weights, density)
    if structure == "weight":
        return weight_mask(weights, density, scope)
    raise ValueError(f"unknown structure {structure!r}: expected 'weight' or 'filter'")


def filters_kept(mask: Mask) -> dict[str, int]:
    """Output units (filters, neurons) of every tensor that keep at least one weight."""
    return {name: int(keep.reshape(keep.shape[0], -1).any(dim=1).sum()) for name, keep in mask.items()}


def filter_density(mask: Mask) -> float:
    total = sum(keep.shape[0] for _, keep in mask.items())
    return sum(filters_kept(mask).values()) / total if total else 1.0


# ------------------------------------------------------------------------------------------------- method
def l1(run: RunContext) -> Summary:
    """Pre-train (or load), prune once by L1 magnitude to the target, fine-tune (:mod:`.one_shot`)."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, L1Config)
    scope = "layerwise" if method.structure == "filter" else method.scope or cfg.sparsity.scope

    def prune(model: nn.Module, params: Mapping[str, nn.Parameter]) -> Mask:
        return l1_mask(params, cfg.sparsity.target, structure=method.structure, scope=scope)

    def describe(mask: Mask) -> dict[str, Any]:
        return {
            "weight_density": mask.density(),
            "filter_density": filter_density(mask),
            "layer_filters_kept": filters_kept(mask),
            "layer_filters_total": {name: keep.shape[0] for name, keep in mask.items()},
        }

    def prepare(model: nn.Module, params: Mapping[str, nn.Parameter]) -> None:
        if method.structure == "filter":
            _warn_classifier(run, model, params)

    spec = OneShot(
        name=MASK_NAME,
        prune=prune,
        fields={"structure": method.structure, "scope": scope},
        event={"structure": method.structure},
        describe=describe,
        prepare=prepare,
    )
    return prune_once_and_finetune(run, spec)


def _warn_classifier(run: RunContext, model: nn.Module, params: Mapping[str, nn.Parameter]) -> None:
    layers = list(prunable_parameters(model))
    if layers and layers[-1] in params:
        run.message(
            f"l1: structure=filter also removes output units of the classifier {layers[-1]} "
            f"(sparsity.exclude_last=true keeps it dense)"
        )
