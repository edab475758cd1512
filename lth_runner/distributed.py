"""Distributed data parallel plumbing: joining the process group, and the few collectives the core needs.

Single-process runs take the trivial path everywhere. Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) describes the group; under SLURM with one task per device, submitit's
``TorchDistributedEnvironment`` exports it from the SLURM variables. The group is joined once per process and never
torn down between the jobs of a multirun (re-creating it hangs).

It is left once, when the process is done: :func:`shutdown`, which the entry point calls after its last job and which
also runs at interpreter exit (an ``atexit`` handler registered by :func:`setup`) for every other way out (an
exception, ``SystemExit`` from a preemption hand-over, ``KeyboardInterrupt``). Nothing may be left to interpreter
finalization: a gloo worker thread that still holds a finished collective whose tensor Python has already dropped
must take the GIL to free it, and when that happens while the interpreter finalizes, CPython ends the thread with
``pthread_exit`` inside a ``noexcept`` C++ destructor, which aborts the process ("terminate called without an active
exception", SIGABRT).
"""

from __future__ import annotations

import atexit
import os
import time
import warnings

import torch
import torch.distributed as dist

from lth_runner.errors import UserError

# Whether setup() has registered the exit handler (once per process).
_exit_handler_registered = False
# Names of the gloo backend's threads (ProcessGroupGloo workers; the tcp transport's event loop never touches Python).
_BACKEND_WORKER_THREAD = "pt_gloo_runloop"


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def requested_world_size() -> int:
    """The world size the environment asks for, before (or without) joining the group."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_JOB_ID" in os.environ and "SUBMITIT_EXECUTOR" in os.environ:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def setup(device_type: str) -> None:
    """Join the process group the environment describes (no-op for a single process or when already joined)."""
    if is_initialized():
        return
    if "WORLD_SIZE" not in os.environ and requested_world_size() > 1:
        try:
            from submitit.helpers import TorchDistributedEnvironment
        except ImportError:
            raise UserError(
                "a multi-task SLURM job needs submitit: pip install submitit hydra-submitit-launcher"
            ) from None
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if requested_world_size() <= 1:
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    _register_exit_handler()


def shutdown(*, synchronize: bool = True) -> None:
    """Leave the process group: once the process is done with it, after the last job of a multirun. Idempotent, and
    a no-op without a group (single process). Never raises: a failure to leave cleanly is a warning.

    ``synchronize``: wait at a barrier first, so that no rank tears its connections down while another still talks
    to it. Only for a process that ends normally: after an error on one rank the others may be inside a different
    collective, and a barrier would then hang or mismatch. The exit handler does not synchronize (it cannot tell a
    normal exit from a failure); the entry point calls ``shutdown()`` after a successful run.

    Then the group is destroyed (its backend with it, worker threads joined, unless something else still holds it:
    with torch 2.14 a DistributedDataParallel wrapper does, even once freed) and the backend's worker threads are given
    the time (and the GIL) to release what they still hold, all while the interpreter is fully alive.
    """
    if not is_initialized():
        return
    me = rank()
    try:
        if synchronize and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()
    except Exception as err:  # a peer that failed or left already; leaving goes on
        warnings.warn(
            f"rank {me}: the final barrier failed ({_one_line(err)}); leaving the process group anyway", stacklevel=2
        )
    try:
        dist.destroy_process_group()
    except Exception as err:
        warnings.warn(f"rank {me}: destroying the process group failed ({_one_line(err)})", stacklevel=2)
    _wait_for_backend_threads()


def _register_exit_handler() -> None:
    global _exit_handler_registered
    if not _exit_handler_registered:
        atexit.register(_shutdown_at_exit)
        _exit_handler_registered = True


def _shutdown_at_exit() -> None:
    try:
        shutdown(synchronize=False)
    except BaseException:  # an exit handler must let the exit go on
        pass


def _wait_for_backend_threads(limit_s: float = 2.0, poll_s: float = 0.005) -> None:
    """Sleep (releasing the GIL) until no gloo worker thread is running, seen twice in a row, for at most
    ``limit_s``.

    A worker thread releases a finished collective only after the caller's ``wait()`` has returned; when the caller
    has dropped the tensor meanwhile, the worker takes the GIL to free it. Once a DDP wrapper was built the backend
    outlives ``destroy_process_group`` (torch 2.14), so its threads are not joined then: this wait is what keeps such
    a release out of interpreter finalization. Returns within ``2 * poll_s`` when the threads are idle.
    """
    deadline = time.monotonic() + limit_s
    idle_polls = 0
    while idle_polls < 2 and time.monotonic() < deadline:
        time.sleep(poll_s)
        busy = _backend_threads_running()
        if busy is None:  # no /proc (not Linux): one short pause is all that can be done
            return
        idle_polls = 0 if busy else idle_polls + 1


def _backend_threads_running() -> bool | None:
    """Whether a gloo worker thread of this process is running or runnable (None: threads cannot be inspected)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                stat = f.read()
        except OSError:  # the thread has ended
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name == _BACKEND_WORKER_THREAD and rest.split()[:1] == ["R"]:
            return True
    return False


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any rank (decisions that end loops must agree, or ranks hang)."""
    if not (is_initialized() and world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_bool_tensors(tensors: list[torch.Tensor], src: int = 0) -> list[torch.Tensor]:
    """Every rank gets rank ``src``'s boolean tensors (masks are decided on rank 0, random ones included)."""
    if not (is_initialized() and world_size() > 1):
        return tensors
    out = []
    for tensor in tensors:
        carrier = tensor.to(device=_collective_device(), dtype=torch.uint8).contiguous()
        dist.broadcast(carrier, src=src)
        out.append(carrier.to(device=tensor.device, dtype=torch.bool))
    return out


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
