"""Preemption: turning the scheduler's warning signal into a checkpoint before the job goes away.

SLURM (through submitit, ``--signal=USR2@<signal_delay_s>``) warns a job before its time limit or when it is
preempted. The handler installed here only records the signal. Between two optimizer steps the trainer notices it,
all ranks agree, rank 0 writes a checkpoint of the exact step (atomically), and then the signal is handed on: to
submitit's own handler, which requeues the job and exits, or, outside submitit, by exiting. The requeued job runs in
the same directory and resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_state: dict[str, Any] = {"signum": None, "previous": {}}


def requested() -> bool:
    return _state["signum"] is not None


def _record(signum: int, frame: Any) -> None:
    _state["signum"] = signum


def under_submitit() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Record SIGUSR2 (and SIGTERM outside submitit, which uses SIGTERM itself) while a run trains."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ["SIGUSR2"] if under_submitit() else ["SIGUSR2", "SIGTERM"]
    signums = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.getsignal(s) for s in signums}
    _state.update(signum=None, previous=previous)
    for signum in signums:
        signal.signal(signum, _record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.update(signum=None, previous={})


def hand_over(is_main: bool) -> None:
    """After the checkpoint: let the scheduler's handler requeue (rank 0), or leave. Does not return."""
    signum = _state["signum"]
    handler = _state["previous"].get(signum)
    if is_main and callable(handler):
        handler(signum, None)  # submitit: requeue, then sys.exit
    raise SystemExit(128 + int(signum or 0))
