"""Distributed data parallel plumbing: joining the process group, and the few collectives the core needs.

Single-process runs take the trivial path everywhere. Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) describes the group; under SLURM with one task per device, submitit's
``TorchDistributedEnvironment`` exports it from the SLURM variables. The group is joined once per process and never
torn down between the jobs of a multirun (re-creating it hangs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lth_runner.errors import UserError


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
