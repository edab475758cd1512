"""A test plugin (``plugins=[tests.fault_injection]``) that SIGKILLs the run at an exact point, like a preemption
without warning: ``LTH_KILL_AT=<stage key>:<optimizer step>``. Production code is untouched; the plugin wraps
``Trainer.fit`` to add one hook."""

from __future__ import annotations

import os
import signal

from lth_runner.training.trainer import Trainer

_KEY, _, _STEP = os.environ.get("LTH_KILL_AT", "").partition(":")


class _KillAt:
    def after_step(self, trainer: Trainer) -> None:
        if trainer.stage.key == _KEY and trainer.step == int(_STEP):
            os.kill(os.getpid(), signal.SIGKILL)


if _KEY:
    _fit = Trainer.fit

    def fit(self: Trainer, stage, hooks=(), **kwargs):
        return _fit(self, stage, [*hooks, _KillAt()], **kwargs)

    Trainer.fit = fit
