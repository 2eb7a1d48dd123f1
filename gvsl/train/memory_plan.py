"""What fits in a GPU's free memory: the plan behind ``gvsl pretrain --batch auto``.

Pure arithmetic (no torch, no device): ``plan_memory`` takes the free memory in bytes, the crop, the widths, the
architecture, the precision and the parameter count, and returns a ``MemoryPlan`` (batch, activation
checkpointing, crop, estimated peak, a message saying what was chosen and why).

Memory model, in bytes, of one pre-training step (forward, loss, backward, Adam)::

    peak = parameters * (16 + 2 under autocast)      # fp32 weights, gradients, Adam's two moments (+ half copies)
         + batch * voxels * per_voxel_bytes(precision)  # activations kept for backward, per voxel and pair
                 * ARCHITECTURE_FACTOR[architecture]
                 * width_factor(widths)
                 * (CHECKPOINTING_FACTOR[architecture] with activation checkpointing, else 1)

Calibration of ``per_voxel_bytes`` (bytes per voxel of the crop, per pair): peak CUDA memory measured on an H200 (torch
2.11+cu130, default widths, 128³ crops, channels-last, ``torch.cuda.max_memory_allocated``, GB = 1e9 bytes): bf16
batch 2: 24.9 GB, fp32 batch 1: 14.3 GB. Less the parameters' share (32,440,739 parameters of the paper
architecture, taken to be the one measured) that is 5,799 and 6,571 bytes per voxel; fp16 is taken as bf16.

The other factors are relative, measured on the development CPU (fp32, growth of the peak resident memory over one
step less gradients and Adam's moments, default widths unless said; see benchmarks/RESULTS.md):

- architecture: correlation / paper = 7,579 / 5,773 bytes per voxel = 1.31 at 48³ (1.16 at 64³; the larger is
  used, and if the H200 peaks were in fact measured with the correlation architecture, its plans err on the safe
  side by that much);
- activation checkpointing (``gvsl.pretrain.step.enable_activation_checkpointing``): paper 3,487 / 6,142 = 0.57
  at 64³ (0.40 at 48³), correlation 4,306 / 7,097 = 0.61 at 64³ (0.60 at 80³, 0.48 at 48³): the largest is used;
- widths: per-voxel bytes grow as ``WIDTH_FREE_CHANNELS + S(widths)``, where S is the sum of the nine widths each
  divided by 8 per 2x pooling of its level (85.1 for the default widths), and ``WIDTH_FREE_CHANNELS`` = 56 stands
  for what does not depend on the widths (inputs, augmentation, warps, loss); fitted to the correlation
  architecture at 48³ with the default widths (7,579) and 4,8,...,64 (3,580); it overestimates 16,32,...,256 by 7 %.

The model is an estimate, not yet checked on a GPU beyond the two peaks it was calibrated on: a plan uses
``USABLE_FRACTION`` of the free memory, leaving the rest for the CUDA caching allocator's fragmentation and cuDNN
workspaces. benchmarks/gpu_check.sh measures the peaks the
plan predicts, so the calibration can be checked on each card.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

GIB = 2 ** 30
PAPER_BATCH = 2  # the batch of the paper's recipe; ``--batch auto`` never goes above it
SIZE_STEP = 16  # voxels taken off each side of the crop per step (the network's size multiple: four poolings)
MIN_SIDE = 64  # the smallest crop side a plan offers (an eighth of the paper's 128³ volume)
USABLE_FRACTION = 0.85  # of the free memory, for the estimated peak

DEFAULT_WIDTHS: tuple[int, ...] = (32, 64, 128, 256, 512, 256, 128, 64, 32)  # gvsl.networks.DEFAULT_CHANNELS
PAPER_PARAMETERS = 32_440_739  # GVSL(architecture="paper") at the default widths (checked by a test)
LEVELS = (0, 1, 2, 3, 4, 3, 2, 1, 0)  # pooling level of each of the nine widths
WIDTH_FREE_CHANNELS = 56.0
MEASURED_PEAKS = {"bf16": (24.9e9, 2), "fp32": (14.3e9, 1)}  # H200, 128³, default widths: (bytes, batch)
ARCHITECTURE_FACTOR = {"paper": 1.0, "correlation": 1.31}
CHECKPOINTING_FACTOR = {"paper": 0.57, "correlation": 0.61}


class NotEnoughMemoryError(ValueError):
    """Even the smallest configuration a plan offers does not fit in the free memory."""


def parameter_bytes(parameters: int, precision: str) -> int:
    """Bytes held whatever the crop: fp32 weights, gradients and Adam's two moments (16 per parameter), plus a
    half-precision copy of the weights (2 per parameter) under bf16/fp16 autocast."""
    return parameters * (16 if precision == "fp32" else 18)


def per_voxel_bytes(precision: str) -> float:
    """Calibrated activation bytes per crop voxel and pair, default widths, paper architecture (module docstring)."""
    peak, batch = MEASURED_PEAKS["fp32" if precision == "fp32" else "bf16"]
    return (peak - parameter_bytes(PAPER_PARAMETERS, precision)) / (batch * 128 ** 3)


def width_sum(widths: Sequence[int]) -> float:
    """S(widths): the nine widths, each divided by 8 per pooling level (channels per full-resolution voxel)."""
    return sum(w / 8 ** level for w, level in zip(widths, LEVELS))


def width_factor(widths: Sequence[int]) -> float:
    """Activation memory of ``widths`` relative to the default widths (module docstring)."""
    return (WIDTH_FREE_CHANNELS + width_sum(widths)) / (WIDTH_FREE_CHANNELS + width_sum(DEFAULT_WIDTHS))


def estimate_peak_bytes(batch: int, patch: Sequence[int], widths: Sequence[int], architecture: str, precision: str,
                        parameters: int, activation_checkpointing: bool) -> int:
    """Estimated peak device memory in bytes of one training step (the module's model)."""
    voxels = patch[0] * patch[1] * patch[2]
    activations = (batch * voxels * per_voxel_bytes(precision) * ARCHITECTURE_FACTOR[architecture]
                   * width_factor(widths) * (CHECKPOINTING_FACTOR[architecture] if activation_checkpointing else 1.0))
    return int(parameter_bytes(parameters, precision) + activations)


@dataclass(frozen=True)
class MemoryPlan:
    """What ``--batch auto`` chose: ``batch`` pairs of ``patch`` (D, H, W voxels), with or without
    ``activation_checkpointing``; ``estimated_peak_bytes`` for it, ``free_bytes`` it was planned for, ``message``."""

    batch: int
    activation_checkpointing: bool
    patch: tuple[int, int, int]
    estimated_peak_bytes: int
    free_bytes: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for the run's start event)."""
        return {**asdict(self), "patch": list(self.patch)}


def describe(batch: int, patch: Sequence[int], activation_checkpointing: bool) -> str:
    """E.g. "batch 2 at 128x128x128 with activation checkpointing"."""
    return (f"batch {batch} at {'x'.join(map(str, patch))}"
            + (" with activation checkpointing" if activation_checkpointing else ""))


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"


def candidate_crops(patch: Sequence[int]) -> list[tuple[int, int, int]]:
    """``patch``, then each side ``SIZE_STEP`` smaller at a time while every side stays >= ``MIN_SIDE`` (a crop
    already below that is offered as it is)."""
    crops = [tuple(int(s) for s in patch)]
    while min(crops[-1]) - SIZE_STEP >= MIN_SIDE:
        crops.append(tuple(s - SIZE_STEP for s in crops[-1]))
    return crops


def candidates(patch: Sequence[int], activation_checkpointing: bool) -> list[tuple[tuple[int, int, int], int, bool]]:
    """(crop, batch, checkpointing) in order of preference: the crop first (the paper's context), then the paper's
    batch, then speed (checkpointing costs about one more forward pass). With ``activation_checkpointing`` asked
    for, only configurations with it."""
    options = [(PAPER_BATCH, False), (PAPER_BATCH, True), (1, False), (1, True)]
    return [(crop, batch, checkpointing) for crop in candidate_crops(patch) for batch, checkpointing in options
            if checkpointing or not activation_checkpointing]


def plan_memory(free_bytes: int, patch: Sequence[int], widths: Sequence[int], architecture: str, precision: str,
                parameters: int, activation_checkpointing: bool = False, device: str = "the GPU") -> MemoryPlan:
    """The first configuration of ``candidates`` whose estimated peak is within ``USABLE_FRACTION`` of
    ``free_bytes``; ``patch`` is the largest crop (D, H, W voxels), ``precision`` the resolved one (fp32, bf16,
    fp16), ``parameters`` the network's parameter count, ``device`` names the device in the message.

    Raises NotEnoughMemoryError naming the free memory and the smallest configuration with its estimate.
    """
    usable = free_bytes * USABLE_FRACTION
    options = candidates(patch, activation_checkpointing)
    estimates = [estimate_peak_bytes(b, crop, widths, architecture, precision, parameters, c)
                 for crop, b, c in options]
    fitting = next((i for i, estimate in enumerate(estimates) if estimate <= usable), None)
    if fitting is None:
        crop, batch, checkpointing = options[-1]
        raise NotEnoughMemoryError(
            f"--batch auto: {gib(free_bytes)} free on {device} is too little for the smallest configuration, "
            f"{describe(batch, crop, checkpointing)} ({precision}, widths {','.join(map(str, widths))}), which "
            f"needs about {gib(estimates[-1] / USABLE_FRACTION)} free (estimated peak {gib(estimates[-1])}); free "
            "memory on the GPU, use narrower --channels, or train on the CPU (--device cpu)")
    crop, batch, checkpointing = options[fitting]
    message = (f"--batch auto: {describe(batch, crop, checkpointing)} ({precision}; estimated peak "
               f"{gib(estimates[fitting])} of {gib(free_bytes)} free on {device})")
    if fitting:  # why: the next better configuration does not fit
        better_crop, better_batch, better_checkpointing = options[fitting - 1]
        message += (f"; {describe(better_batch, better_crop, better_checkpointing)} would need about "
                    f"{gib(estimates[fitting - 1] / USABLE_FRACTION)} free")
    return MemoryPlan(batch, checkpointing, crop, estimates[fitting], int(free_bytes), message)

