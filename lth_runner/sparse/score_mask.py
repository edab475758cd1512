"""Learnable keep-scores on the prunable weights of any model: the mechanism of mask search on frozen weights.

Edge-popup (Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?", Sec. 3) and Lottery
Jackpots' SR-popup (Zhang et al., paper 004, Eqs. 6 and 27) train a score ``s`` per weight while the weights stay
fixed. The forward pass uses ``w * b`` where ``b`` is a binary keep-mask decided from the scores; the backward pass
treats ``b`` as the identity of the scores (straight-through estimator), so

    dL/ds = dL/d(w * b) * w        (ranking by s itself: SR-popup's relaxed mask m)
    dL/ds = dL/d(w * b) * w * sign(s)   (ranking by |s|: edge-popup, whose reference ranks scores.abs())

:class:`ScoreMaskedModel` wraps any registered model (torchvision, timm, this project's) without model-specific
layer classes: the wrapped model's own parameters are never replaced; each forward calls it through
:func:`torch.func.functional_call` with the masked weights substituted. Its parameter and buffer names stay those of
the model (``model.<name>``), so a :class:`~lth_runner.sparse.Mask` from the search uses the names every other
method uses, and a checkpoint of the wrapper (scores and the current keep-mask included) resumes exactly.

The keep-mask ``b`` is state, not a function of the scores recomputed at every forward: :meth:`select_top_k`
re-selects the exact top-k (edge-popup, after every optimizer step), and a method may instead edit it with its own
rule (SR-popup's restricted swap) through :meth:`set_keep`. Counts are exact (per layer, or one global count),
from the fast exact selection of :mod:`lth_runner.sparse.select`, not a full sort.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lth_runner.sparse.mask import Mask
from lth_runner.sparse.select import kth_largest, kth_largest_near, select_top

RANKINGS = ("abs", "value")
BN_STATS = ("update", "frozen")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


class _MaskedWeight(torch.autograd.Function):
    """``w * keep`` forward; backward gives ``w`` the masked gradient and the ranked scores ``grad * w`` (the
    straight-through estimator: d b / d s is read as 1)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, ranked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        keep = keep.to(weight.dtype)
        ctx.save_for_backward(weight, keep)
        return weight * keep

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        weight, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_ranked = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_ranked, None


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict and buffer names cannot contain dots


class ScoreMaskedModel(nn.Module):
    """``model`` with a learnable score on each weight named in ``scores`` and an exact-count keep-mask.

    ``kept`` is the number of weights to keep: one ``int`` for a global count over all scored tensors, or a
    ``{name: count}`` per layer. ``rank_by`` is ``"abs"`` (edge-popup: the largest ``|s|`` are kept) or
    ``"value"`` (SR-popup's relaxed mask: the largest ``s``). ``train`` names what trains besides the scores:
    any of ``"weights"`` (the scored tensors), ``"bias"`` (every other parameter except normalisation affine ones),
    ``"bn_affine"``; everything else is frozen (``requires_grad=False``) and stays bit-identical. ``bn_stats``:
    ``"update"`` (running statistics follow the masked network in training mode) or ``"frozen"`` (normalisation
    layers stay in evaluation mode).
    """

    def __init__(
        self,
        model: nn.Module,
        scores: Mapping[str, torch.Tensor],
        kept: int | Mapping[str, int],
        *,
        rank_by: str = "abs",
        train: tuple[str, ...] = (),
        bn_stats: str = "update",
    ) -> None:
        super().__init__()
        if rank_by not in RANKINGS:
            raise ValueError(f"rank_by={rank_by!r}: expected one of {RANKINGS}")
        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats={bn_stats!r}: expected one of {BN_STATS}")
        unknown = set(train) - {"weights", "bias", "bn_affine"}
        if unknown:
            raise ValueError(f"train={sorted(unknown)}: expected weights, bias or bn_affine")
        self.model = model
        self.names = list(scores)
        own = dict(model.named_parameters())
        self._weights = {n: own[n] for n in self.names if n in own}  # looked up once, not at every forward
        missing = [n for n in self.names if n not in own]
        if missing:
            raise ValueError(f"scores for {missing[0]!r}, which is not a parameter of the model")
        for name in self.names:
            if scores[name].shape != own[name].shape:
                raise ValueError(f"scores for {name} have shape {tuple(scores[name].shape)}, not {own[name].shape}")
        if isinstance(kept, int):
            total = sum(own[n].numel() for n in self.names)
            if not 0 <= kept <= total:
                raise ValueError(f"kept={kept}: expected 0..{total}")
        else:
            for name in self.names:
                if not 0 <= kept[name] <= own[name].numel():
                    raise ValueError(f"kept[{name!r}]={kept[name]}: expected 0..{own[name].numel()}")
        self.kept: int | dict[str, int] = kept if isinstance(kept, int) else {n: int(kept[n]) for n in self.names}
        self._previous: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # last ranked scores and threshold
        self.rank_by, self.bn_stats = rank_by, bn_stats
        self.scores = nn.ParameterDict(
            {_key(n): nn.Parameter(scores[n].detach().clone().to(own[n].device, own[n].dtype)) for n in self.names}
        )
        for name in self.names:
            self.register_buffer(f"keep__{_key(name)}", torch.zeros_like(own[name], dtype=torch.bool))
        affine = {
            f"{m}.{p}" if m else p
            for m, module in model.named_modules()
            if isinstance(module, _NORMS)
            for p in ("weight", "bias")
        }
        self._requires_grad = {name: param.requires_grad for name, param in own.items()}
        for name, param in own.items():
            if name in scores:
                param.requires_grad_("weights" in train)
            elif name in affine:
                param.requires_grad_("bn_affine" in train)
            else:
                param.requires_grad_("bias" in train)
        self.select_top_k()

    # ------------------------------------------------------------------------------------------------ masks
    def score(self, name: str) -> nn.Parameter:
        return self.scores[_key(name)]

    def keep(self, name: str) -> torch.Tensor:
        return getattr(self, f"keep__{_key(name)}")

    def ranked(self) -> dict[str, torch.Tensor]:
        """The values the keep-mask ranks (``|s|`` or ``s``), detached."""
        return {n: self._ranked(self.score(n)).detach() for n in self.names}

    def mask(self) -> Mask:
        """The current keep-mask as an ordinary :class:`Mask` (a copy), named as the model's parameters."""
        return Mask({n: self.keep(n).clone() for n in self.names})

    def set_keep(self, mask: Mask | Mapping[str, torch.Tensor]) -> None:
        """Replace the keep-mask (a method's own selection rule, or a mask loaded from any run)."""
        for name in self.names:
            self.keep(name).copy_(mask[name].to(self.keep(name).device))

    @torch.no_grad()
    def select_top_k(self) -> None:
        """Keep exactly the top ``kept`` ranked scores (per layer, or globally); ties go to the earlier entry.
        Per layer, the threshold search starts from the previous selection's (:func:`kth_largest_near`)."""
        ranked = self.ranked()
        if isinstance(self.kept, int):
            self.set_keep(select_top(ranked, self.kept))
            return
        masks = {}
        for name in self.names:
            k, x = self.kept[name], ranked[name]
            if k == 0 or k == x.numel():
                masks[name] = select_top({name: x}, k)[name]
                continue
            previous = self._previous.get(name)
            if previous is None:
                threshold = kth_largest([x], k)
            else:
                threshold = kth_largest_near(x, k, *previous)
            masks[name] = select_top({name: x}, k, threshold=threshold)[name]
            self._previous[name] = (x.clone(), threshold)
        self.set_keep(Mask(masks))

    def masked_weights(self) -> dict[str, torch.Tensor]:
        """``w * b`` for every scored weight, differentiable to the scores (and to ``w`` when it trains)."""
        return {n: _MaskedWeight.apply(self._weights[n], self._ranked(self.score(n)), self.keep(n)) for n in self.names}

    def _ranked(self, score: torch.Tensor) -> torch.Tensor:
        return score.abs() if self.rank_by == "abs" else score

    # ------------------------------------------------------------------------------------------------ module
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.masked_weights(), args, kwargs, strict=False)

    def train(self, mode: bool = True) -> ScoreMaskedModel:
        super().train(mode)
        if mode and self.bn_stats == "frozen":
            for module in self.model.modules():
                if isinstance(module, _NORMS[:4]):  # the ones with running statistics
                    module.eval()
        return self

    def release(self) -> nn.Module:
        """The wrapped model with its parameters' ``requires_grad`` as they were before wrapping (to train it)."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, True))
        return self.model

    @torch.no_grad()
    def export(self) -> nn.Module:
        """The wrapped model with ``w * b`` written into its weights (a plain sparse network, e.g. to retrain),
        its parameters trainable again as before wrapping."""
        own = dict(self.model.named_parameters())
        for name in self.names:
            own[name].mul_(self.keep(name).to(own[name].dtype))
        return self.release()


class ReselectTopK:
    """Trainer hook: re-select the exact top-k after every optimizer step (edge-popup)."""

    def __init__(self, wrapper: ScoreMaskedModel) -> None:
        self.wrapper = wrapper

    def after_step(self, trainer: Any) -> None:
        self.wrapper.select_top_k()
