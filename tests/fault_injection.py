"""A test plugin (``plugins=[tests.fault_injection]``) that interrupts a run at an exact point. Production code is
untouched; the plugin wraps ``Trainer.fit`` to add one hook.

- ``LTH_KILL_AT=<stage key>:<optimizer step>``: SIGKILL, like a preemption without warning.
- ``LTH_SIGNAL_AT=<stage key>:<optimizer step>:<SIGNAL NAME>[:<times>]``: send that signal (e.g. ``SIGUSR2``, the
  warning SLURM sends before a time limit or a preemption; ``SIGINT``, Ctrl-C; twice for an impatient user) and keep
  training, as a real job would until it notices.
"""

from __future__ import annotations

import os
import signal

from lth_runner.training.trainer import Trainer


def _point(variable: str) -> tuple[str, int, str, int] | None:
    value = os.environ.get(variable)
    if not value:
        return None
    key, step, *rest = value.split(":")
    return key, int(step), (rest[0] if rest else "SIGKILL"), int(rest[1]) if len(rest) > 1 else 1


_POINTS = [p for p in (_point("LTH_KILL_AT"), _point("LTH_SIGNAL_AT")) if p is not None]


class _Interrupt:
    def after_step(self, trainer: Trainer) -> None:
        for key, step, name, times in _POINTS:
            if trainer.stage.key == key and trainer.step == step:
                for _ in range(times):
                    os.kill(os.getpid(), getattr(signal, name))


if _POINTS:
    _fit = Trainer.fit

    def fit(self: Trainer, stage, hooks=(), **kwargs):
        return _fit(self, stage, [*hooks, _Interrupt()], **kwargs)

    Trainer.fit = fit
