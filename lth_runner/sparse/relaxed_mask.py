"""A relaxed mask ``m in [0, 1]^d`` on the prunable weights, learned together with them.

Paper 001 (Fracastoro, Fosson, Migliorati, Calafiore, "Playing the Lottery With Concave Regularizers") trains
``L(x; m * theta) + lambda * R(m)`` jointly in ``theta`` and ``m``; Continuous Sparsification (Savarese et al.,
NeurIPS 2020) writes the same relaxation as ``m = sigmoid(beta * s)`` with the temperature ``beta`` annealed so the
mask turns binary. Both parameterisations are here:

- ``clip``: the parameter is ``m`` itself, started at ``mask_init`` (1: the dense network) and projected back onto
  ``[0, 1]`` after every optimizer step (:class:`ProjectToUnitBox`): projected gradient descent on the box
  ``[0, 1]^d`` of the paper's formulation.
- ``sigmoid``: the parameter is ``s``, started at ``s0 = mask_init`` (0); ``m = sigmoid(beta s)``, divided by
  ``sigmoid(s0)`` with ``scale`` (CS's choice, so ``m = 1`` at the start; the scaled mask may exceed 1).
  :class:`TemperatureSchedule` sets ``beta = final_temp^(e / (E - 1))`` at epoch ``e`` of ``E`` (CS's per-epoch
  multiplication by ``final_temp^(1/(E-1))``).

:class:`RelaxedMaskedModel` is the mask-search wrapper (:class:`~lth_runner.sparse.score_mask.ScoreMaskedModel`:
any registered model through ``torch.func.functional_call``, parameter names unchanged, state resumable) with a
continuous forward ``w * b * m`` in place of the straight-through ``w * b``. ``b`` is the binary keep-mask: all ones
at the start, the survivors of earlier rounds later (``round_reset=hard``). The weights train with ``optim.*``; the
mask parameters are an optimizer group of their own (:meth:`RelaxedMaskedModel.optimizer_groups`: own rate scale,
momentum and no weight decay by default, as CS). The penalty gradient is added by :class:`MaskPenalty`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lth_runner.sparse.mask import Mask
from lth_runner.sparse.score_mask import ScoreMaskedModel
from lth_runner.sparse.select import prune_to_density

PARAMETERISATIONS = ("clip", "sigmoid")
# Ranking by count breaks ties (many m clamped at exactly 0 or 1) by |theta|, a term far below any real difference.
_TIE_BREAK = 1e-9


class RelaxedMaskedModel(ScoreMaskedModel):
    """``model`` computed with ``w * b * m`` on the weights ``names``, ``m`` a relaxed mask (see the module).

    ``mask_group`` holds the mask parameters' optimizer settings (``lr_scale``, ``momentum``, ``weight_decay``).
    Everything but the mask parameters trains as usual (``train`` as in the base class)."""

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        *,
        parameterisation: str = "clip",
        init: float = 1.0,
        scale: bool = True,
        mask_group: Mapping[str, Any] | None = None,
        train: tuple[str, ...] = ("weights", "bias", "bn_affine"),
        bn_stats: str = "update",
    ) -> None:
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation={parameterisation!r}: expected one of {PARAMETERISATIONS}")
        own = dict(model.named_parameters())
        scores = {n: torch.full_like(own[n], init) for n in names}
        super().__init__(model, scores, {n: own[n].numel() for n in names}, rank_by="value", train=train,
                         bn_stats=bn_stats)  # fmt: skip
        self.parameterisation, self.init = parameterisation, float(init)
        self.scale = 1.0 / _sigmoid(init) if parameterisation == "sigmoid" and scale else 1.0
        self.mask_group = dict(mask_group or {})
        self.register_buffer("temperature", torch.ones(()))  # beta; in the state, so a resumed epoch uses it

    # ------------------------------------------------------------------------------------------------ masks
    def relaxed(self, name: str) -> torch.Tensor:
        """The mask the forward pass multiplies by (differentiable in the mask parameter)."""
        param = self.score(name)
        if self.parameterisation == "clip":
            return param
        return torch.sigmoid(self.temperature * param) * self.scale

    @torch.no_grad()
    def values(self) -> dict[str, torch.Tensor]:
        """The relaxed mask in ``[0, 1]`` that a value threshold compares: ``m`` (clip) or ``sigmoid(beta s)``
        (sigmoid, unscaled: ``> 0.5`` is CS's ticket ``s > 0``); 0 where ``b`` has pruned."""
        out = {}
        for name in self.names:
            param = self.score(name)
            m = param.clamp(0.0, 1.0) if self.parameterisation == "clip" else torch.sigmoid(self.temperature * param)
            out[name] = m * self.keep(name)
        return out

    @torch.no_grad()
    def ranking(self) -> dict[str, torch.Tensor]:
        """What a count threshold ranks: the mask parameter (``m``, or ``s``: monotone in ``sigmoid(beta s)``,
        which saturates at 1 in floating point), ties broken by ``|theta|``."""
        magnitudes = {n: self._weights[n].detach().abs().double() for n in self.names}
        top = max((float(w.max()) for w in magnitudes.values() if w.numel()), default=0.0) or 1.0
        return {n: self.score(n).detach().double() + _TIE_BREAK * magnitudes[n] / top for n in self.names}

    def threshold_by_value(self, threshold: float) -> Mask:
        """Keep ``m > threshold`` (among the survivors of ``b``)."""
        return Mask({n: (v > threshold) & self.keep(n) for n, v in self.values().items()})

    def threshold_by_count(self, density: float, scope: str) -> Mask:
        """Keep exactly ``density`` of all mask entries (globally or per layer), the largest mask parameters among
        the survivors of ``b``."""
        return prune_to_density(self.ranking(), density, scope=scope, alive=self.mask())

    @torch.no_grad()
    def restart(self, mode: str) -> None:
        """Between rounds. ``hard``: every mask parameter back to its start (the round's mask is fixed in ``b`` by
        the caller). ``soft`` (CS's ``prune``): ``s <- min(s, s0)``, entries that left stay where they are;
        ``beta`` back to 1 either way."""
        for name in self.names:
            param = self.score(name)
            if mode == "hard":
                param.fill_(self.init)
            elif mode == "soft":
                param.clamp_(max=self.init)
            else:
                raise ValueError(f"restart mode {mode!r}: expected hard or soft")
        self.temperature.fill_(1.0)

    @torch.no_grad()
    def relaxed_and_derivative(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The forward mask ``m`` and ``dm / d(parameter)`` (None: 1, the clip parameterisation), detached."""
        param = self.score(name)
        if self.parameterisation == "clip":
            return param.detach(), None
        sig = torch.sigmoid(self.temperature * param)
        return sig * self.scale, sig * (1 - sig) * (self.temperature * self.scale)

    @torch.no_grad()
    def folded(self) -> dict[str, torch.Tensor]:
        """``theta * m * b`` for every masked weight: the relaxed network's effective weights."""
        return {n: self._weights[n].detach() * self.relaxed(n).detach() * self.keep(n) for n in self.names}

    def masked_weights(self) -> dict[str, torch.Tensor]:
        return {n: torch.where(self.keep(n), self._weights[n] * self.relaxed(n), 0.0) for n in self.names}

    # ------------------------------------------------------------------------------------------- optimizer
    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The wrapped model's parameters with ``optim.*``, the mask parameters with ``mask_group``'s settings."""
        group = {"params": list(self.scores.values()), **self.mask_group}
        if group.get("momentum", None) == 0.0:
            group["nesterov"] = False  # torch refuses Nesterov without momentum
        return [{"params": list(self.model.parameters())}, group]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------------ hooks
class MaskPenalty:
    """Trainer hook: adds ``d(lambda * R(m)) / d(mask parameter)`` to the mask gradients before every step.

    ``cost`` maps mask values to per-entry costs (:mod:`lth_runner.sparse.mask_penalties`); ``R`` sums them over
    the entries ``b`` keeps (``reduction="mean"``: divides by their number). With ``slope`` (the cost's derivative
    in closed form) the gradient is ``lambda * slope(m) * dm/dparam`` on the kept entries; without it, the data-free
    graph of ``R`` is differentiated by autograd. Either way it is never added to the loss."""

    def __init__(
        self,
        wrapper: RelaxedMaskedModel,
        cost: Callable[[torch.Tensor], torch.Tensor],
        coefficient: float,
        *,
        slope: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "sum",
        threshold: float = 0.5,
    ) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction={reduction!r}: expected sum or mean")
        self.wrapper, self.cost, self.slope, self.coefficient = wrapper, cost, slope, coefficient
        self.reduction, self.threshold = reduction, threshold

    def _entries(self) -> int:
        """How many entries ``R`` averages over with ``reduction="mean"`` (1 with ``sum``)."""
        if self.reduction == "sum":
            return 1
        return max(1, sum(int(self.wrapper.keep(n).sum()) for n in self.wrapper.names))

    def penalty(self) -> torch.Tensor:
        """``R(m)`` (differentiable in the mask parameters)."""
        w = self.wrapper
        return sum(torch.where(w.keep(n), self.cost(w.relaxed(n)), 0.0).sum() for n in w.names) / self._entries()

    def before_step(self, trainer: Any) -> None:
        if self.coefficient == 0.0:
            return
        w = self.wrapper
        params = [w.score(n) for n in w.names]
        if self.slope is None:
            with torch.enable_grad():
                grads = list(torch.autograd.grad(self.coefficient * self.penalty(), params))
        else:
            scale, grads = self.coefficient / self._entries(), []
            for name in w.names:
                m, derivative = w.relaxed_and_derivative(name)
                grad = self.slope(m)
                if derivative is not None:
                    grad.mul_(derivative)
                grads.append(grad.masked_fill_(~w.keep(name), 0.0).mul_(scale))
        for param, grad in zip(params, grads):
            if param.grad is None:
                param.grad = grad
            else:
                param.grad.add_(grad)

    @torch.no_grad()
    def log_fields(self, trainer: Any) -> dict[str, Any]:
        values = self.wrapper.values()
        kept = sum(int(self.wrapper.keep(n).sum()) for n in self.wrapper.names)
        inside = [v[self.wrapper.keep(n)] for n, v in values.items()]
        flat = torch.cat([v.reshape(-1) for v in inside]) if inside else torch.zeros(0)
        return {
            "mask_penalty": float(self.penalty()),
            "mask_mean": float(flat.mean()) if flat.numel() else 0.0,
            "mask_above_threshold": float((flat > self.threshold).sum()) / max(1, kept),
            "mask_fractional": float(((flat > 0) & (flat < 1)).sum()) / max(1, kept),
            "mask_temperature": float(self.wrapper.temperature),
        }


class ProjectToUnitBox:
    """Trainer hook (``clip``): ``m <- clamp(m, 0, 1)`` after every optimizer step."""

    def __init__(self, wrapper: RelaxedMaskedModel) -> None:
        self.wrapper = wrapper

    @torch.no_grad()
    def after_step(self, trainer: Any) -> None:
        torch._foreach_clamp_min_(list(self.wrapper.scores.values()), 0.0)
        torch._foreach_clamp_max_(list(self.wrapper.scores.values()), 1.0)


class TemperatureSchedule:
    """Trainer hook (``sigmoid``): ``beta = final^(e / (E - 1))`` during epoch ``e = 0 .. E-1`` of the stage."""

    def __init__(self, wrapper: RelaxedMaskedModel, final: float, epochs: int) -> None:
        self.wrapper, self.final, self.epochs = wrapper, final, epochs

    def beta(self, epoch: int) -> float:
        if self.epochs <= 1:
            return 1.0
        return self.final ** (min(epoch, self.epochs - 1) / (self.epochs - 1))

    def on_stage_start(self, trainer: Any) -> None:
        self.wrapper.temperature.fill_(self.beta(0))

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.wrapper.temperature.fill_(self.beta(trainer.epoch))  # the next epoch's (the last one's: final)
