"""Neural variable risk minimisation restricted to the mask (Xie et al. 2021, "Artificial Neural Variability for
Deep Learning", NVRM-SGD; used on tickets in paper 002, Sakamoto & Sato, Sec. 3.2).

The reference (``variable_optim/vsgd.py``) ends every optimizer step with ``theta <- theta + (eps_t - eps_(t-1))``,
``eps_t ~ N(0, b^2)`` elementwise, so the next gradient is taken at noisy weights, and at the last step of every
epoch it only takes the noise off, so the weights an epoch ends with are clean. Here the noise is ``m * eps_t``:
pruned weights stay exactly zero. It is drawn from a generator seeded by (run seed, stage key, step), so a resumed
stage draws the same noise without storing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.utils.seeding import derive_seed


class NVRM:
    """Hook (after every other ``after_step`` hook): puts ``m * eps_t`` on ``params`` after step ``t``, except at
    the end of an epoch; :attr:`take_off` (a hook that goes before every other ``after_step`` hook) takes the
    previous step's noise off right after the optimizer step, so the other hooks (mask enforcement, pruning events,
    rewind captures) see clean weights.

    Evaluations and checkpoints see clean weights (``clean_weights`` restores the copy taken when the noise went
    on, bit for bit) and training continues on exactly the same noisy weights (``restore_weights`` redraws
    ``eps_t``), so a stage resumed from a mid-epoch checkpoint trains as an uninterrupted one does.
    """

    def __init__(
        self, params: Sequence[nn.Parameter], *, std: float, seed: int, enforcer: MaskEnforcer | None = None
    ) -> None:
        self.std, self.seed, self.enforcer = std, seed, enforcer
        self._params = list(params)
        self._weights = [p.detach() for p in self._params]
        self._noise: list[torch.Tensor] | None = None  # what is on the weights now
        self._clean: list[torch.Tensor] | None = None  # the weights before it went on
        self.take_off = _TakeOff(self)

    @staticmethod
    def noisy_at(trainer: Any) -> bool:
        """Whether the weights carry noise after ``trainer.step`` steps (never at an epoch's end or the start)."""
        return trainer.step > trainer.stage.start_step and trainer.step % trainer.steps_per_epoch != 0

    def draw(self, trainer: Any) -> list[torch.Tensor]:
        """``m * eps_t`` for the step ``trainer.step`` of this stage: the same numbers every time it is asked."""
        if not self._weights:
            return []
        first = self._weights[0]
        generator = torch.Generator(device=first.device)
        generator.manual_seed(derive_seed(self.seed, "nvrm", trainer.stage.key, trainer.step))
        flat = torch.randn(
            sum(w.numel() for w in self._weights), generator=generator, device=first.device, dtype=first.dtype
        )
        flat.mul_(self.std)
        noise = [part.view(w.shape) for part, w in zip(flat.split([w.numel() for w in self._weights]), self._weights)]
        factors = self.enforcer.factors() if self.enforcer is not None else {}
        masked = [(n, factors[id(p)]) for n, p in zip(noise, self._params) if id(p) in factors]
        if masked:
            torch._foreach_mul_([n for n, _ in masked], [f for _, f in masked])
        return noise

    @torch.no_grad()
    def put_on(self, trainer: Any) -> None:
        self._clean = [w.clone() for w in self._weights]
        self._noise = self.draw(trainer)
        if self._weights:
            torch._foreach_add_(self._weights, self._noise)

    @torch.no_grad()
    def remove(self) -> None:
        """After an optimizer step: ``theta - eps_(t-1)``, the step applied to the clean weights."""
        if self._noise is not None and self._weights:
            torch._foreach_sub_(self._weights, self._noise)
        self._noise = self._clean = None

    def after_step(self, trainer: Any) -> None:
        if self.noisy_at(trainer):
            self.put_on(trainer)

    @torch.no_grad()
    def clean_weights(self, trainer: Any) -> None:
        if self._noise is not None and self._weights:
            torch._foreach_copy_(self._weights, self._clean)
        self._noise = self._clean = None

    def restore_weights(self, trainer: Any) -> None:
        if self._noise is None and trainer.stage is not None and self.noisy_at(trainer):
            self.put_on(trainer)


class _TakeOff:
    """The first ``after_step`` hook of a stage with NVRM: the previous noise comes off the stepped weights."""

    def __init__(self, nvrm: NVRM) -> None:
        self.nvrm = nvrm

    def after_step(self, trainer: Any) -> None:
        self.nvrm.remove()
