"""``--batch auto`` resolved for a run's device: the free memory read, ``gvsl.train.memory_plan`` applied, and the
chosen batch, crop and activation checkpointing written into the configuration (so ``config.json`` and a resume
hold the resolved values, never ``auto``)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from gvsl.train.config import AUTO_BATCH, TrainConfig
from gvsl.train.device import Precision
from gvsl.train.distributed import DistributedContext
from gvsl.train.memory_plan import PAPER_BATCH, MemoryPlan, plan_memory


def free_memory_bytes(device: torch.device, context: DistributedContext) -> Optional[int]:
    """Free memory in bytes on a CUDA ``device`` (``torch.cuda.mem_get_info``; the least over all processes when
    several run, so they all choose alike); None on other devices, where nothing is planned."""
    if device.type != "cuda":
        return None
    return context.minimum(int(torch.cuda.mem_get_info(device)[0]), device)


def resolve_batch(config: TrainConfig, model: nn.Module, device: torch.device, precision: Precision,
                  context: DistributedContext) -> tuple[TrainConfig, Optional[MemoryPlan]]:
    """``config`` with ``batch`` resolved: unchanged when a number; for ``auto`` on CUDA the plan for ``model``
    (a GVSL network: its widths, architecture and parameter count) in the device's free memory, which may also turn
    on activation checkpointing and reduce the crop; ``PAPER_BATCH`` elsewhere (CPU, MPS).

    Raises ``gvsl.train.memory_plan.NotEnoughMemoryError`` (a ValueError) when nothing fits.
    """
    if config.batch != AUTO_BATCH:
        return config, None
    free = free_memory_bytes(device, context)
    if free is None:
        return replace(config, batch=PAPER_BATCH), None
    plan = plan_memory(free, config.patch, model.channels, model.architecture, precision.name,
                       sum(p.numel() for p in model.parameters()), config.activation_checkpointing,
                       device=f"{device} ({torch.cuda.get_device_name(device)})")
    return replace(config, batch=plan.batch, patch=plan.patch,
                   activation_checkpointing=plan.activation_checkpointing), plan
