"""Several processes (``torchrun``): process group set-up, rank facts, and the few collectives training needs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; without them training runs as a single process. The
backend is NCCL for CUDA devices and Gloo otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (config, events, checkpoints, TensorBoard); the others only train."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any rank (so all ranks stop at the same iteration)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def minimum(self, value: int, device: torch.device) -> int:
        """The least of every rank's ``value`` (e.g. free memory, so all ranks plan alike)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())


def context_from_environment() -> DistributedContext:
    """The ranks ``torchrun`` gave this process (rank 0 of 1 when not launched by it)."""
    return DistributedContext(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_process_group(context: DistributedContext, device: torch.device) -> None:
    """Join the process group when several processes run (NCCL on CUDA, Gloo otherwise); no-op for one."""
    if not context.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=context.rank,
                            world_size=context.world_size)


def destroy_process_group(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
