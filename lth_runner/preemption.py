"""Signals: turning Ctrl-C, SIGTERM and the scheduler's preemption warning into a checkpoint before the process goes.

SLURM (through submitit, ``--signal=USR2@<signal_delay_s>``) warns a job before its time limit or when it is
preempted; a user presses Ctrl-C (SIGINT); a container manager sends SIGTERM. The handlers installed here only
record the signal, so no write is ever cut in half. Between two optimizer steps the trainer notices it, all ranks
agree, rank 0 writes a checkpoint of the exact step (atomically), and the signal is handed on: to submitit's own
handler, which requeues the job and exits, or else by raising :class:`Interrupted`, which the command line turns
into one line and exit code ``128 + signal`` (130 for Ctrl-C). Between stages the same request ends the run at once:
everything finished is already saved. Re-running the same command resumes from the checkpoint.

A second Ctrl-C does not wait for the next step: it raises ``KeyboardInterrupt`` at once. Every file is written to
a temporary name and renamed, so even then the last complete checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_state: dict[str, Any] = {"signum": None, "previous": {}}


class Interrupted(SystemExit):
    """The run stopped on a signal after saving what it had; ``code`` is ``128 + signal``, ``message`` one line."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.message = int(signum), message


def requested() -> bool:
    return _state["signum"] is not None


def signum() -> int | None:
    """The recorded signal, if any."""
    return _state["signum"]


def _record(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT and _state["signum"] == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    _state["signum"] = signum


def under_submitit() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Record SIGINT, SIGUSR2 and (outside submitit, which uses it itself) SIGTERM while a run trains."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ["SIGINT", "SIGUSR2"] if under_submitit() else ["SIGINT", "SIGUSR2", "SIGTERM"]
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


def describe(signum: int | None) -> str:
    """How the run ended, in a word: Ctrl-C interrupts it, the scheduler's warning preempts it."""
    if signum == signal.SIGINT:
        return "interrupted"
    return "preempted" if signum == getattr(signal, "SIGUSR2", None) else "stopped"


def hand_over(is_main: bool, saved: str) -> None:
    """After the checkpoint (``saved`` says what was saved): let the scheduler's handler requeue (rank 0), or leave
    with :class:`Interrupted`. Does not return."""
    signum = int(_state["signum"] or 0)
    handler = _state["previous"].get(signum)
    if is_main and signum != signal.SIGINT and callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)  # submitit: requeue, then sys.exit
    name = signal.Signals(signum).name if signum else "signal"
    raise Interrupted(signum, f"{describe(signum)} ({name}): {saved}; run the same command again to resume")


def stop_if_requested(where: str, *, anywhere: bool | None = None, is_main: bool = True) -> None:
    """Between stages: a recorded signal ends the run here (everything finished so far is saved). Several processes
    pass ``anywhere`` (whether any rank recorded one) so that all of them stop at the same stage boundary."""
    if requested() if anywhere is None else anywhere:
        hand_over(is_main, f"stopped {where}, all finished stages saved")
