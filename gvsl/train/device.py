"""Device and numeric precision for training, and peak memory reporting."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import ContextManager, Optional, Sequence

import torch


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA (GPU ``local_rank``), then Apple MPS, then CPU; otherwise the named device.

    Raises ValueError when the named device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but this torch build sees no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but Apple MPS is not available")
    return device


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: plain float32) and whether gradients need a loss scaler (float16)."""

    name: str
    autocast_dtype: Optional[torch.dtype]
    use_scaler: bool

    def autocast(self, device: torch.device) -> ContextManager:
        """The autocast context for the forward pass (a no-op in float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def select_precision(name: str, device: torch.device) -> Precision:
    """``"auto"``: on CUDA bf16 where supported, else fp16 with a scaler; float32 elsewhere.

    (bf16 autocast on CPU was measured slower than float32, and MPS float16
    training is less mature, hence float32 there.) Explicit names are honoured.
    """
    if name == "auto":
        if device.type != "cuda":
            name = "fp32"
        else:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp32":
        return Precision("fp32", None, False)
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if name == "fp16":
        return Precision("fp16", torch.float16, True)
    raise ValueError(f"unknown precision {name!r} (use auto, fp32, bf16 or fp16)")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16 convolutions are
    fast; elsewhere they are emulated and slower than float32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def select_inference_precision(name: str, device: torch.device) -> Precision:
    """As ``select_precision`` for forward passes only, but ``"auto"`` on a CPU with native bfloat16 is bf16.

    Measured for ``gvsl segment`` (benchmarks/RESULTS.md): a 48³ window at 8…128 widths, channels-last, 86-88 ms in
    bf16 against 134-147 ms in float32 on one core of an AVX512-BF16 EPYC; held-out Dice within 0.001 of float32 on
    six trained models. Training keeps float32 on CPUs (``select_precision``).
    """
    if name == "auto" and device.type == "cpu":
        return select_precision("bf16" if cpu_has_native_bf16() else "fp32", device)
    return select_precision(name, device)


def forward_channels_last(device: torch.device) -> bool:
    """The layout of a forward pass without gradients: channels-last-3d on a CPU, where mkldnn's 3D convolutions run
    fastest in it at every width measured (benchmarks/RESULTS.md: a 2 mm pair through the matching network 10.3 ->
    8.1 s at 8…128 widths, 16.5 -> 14.0 s at the default ones; a 48³ segmentation window 101 -> 67 ms); contiguous
    on CUDA/MPS, as trained. Training has its own rule (``use_channels_last``)."""
    return torch.device(device).type == "cpu"


def use_channels_last(setting: Optional[bool], device: torch.device, channels: Sequence[int],
                      precision: Precision) -> bool:
    """The channels-last-3d layout for training: as set, or (None) on the CPU in float32 when every width is >= 32;
    contiguous on CUDA/MPS and for bfloat16 on the CPU.

    Each rule is a measurement (benchmarks/RESULTS.md), not an assumption. CPU (the project's 2-core machine, fp32):
    channels-last faster at the default widths (13.1-15.5 against 18.2 s per 64³ step), several times slower
    convolution backward at narrow ones. CPU bfloat16 (torch 2.13.0+cpu, AVX512-BF16): the channels-last
    convolution backward gives different weight gradients in every process, and NaN ones in some, where contiguous
    and float32 channels-last repeat exactly. CUDA (H200, torch 2.11+cu130, default widths, 128³, bf16 batch 2,
    with ``torch.backends.cudnn.benchmark``): contiguous 0.36 s per step against 0.43 s channels-last, so
    contiguous; not yet measured in fp32 or on other cards: benchmarks/gpu_check.sh times both layouts in both
    precisions.
    """
    if setting is not None:
        return bool(setting)
    return device.type == "cpu" and precision.autocast_dtype is None and min(channels) >= 32


def use_fast_kernels(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per shape and keep the fastest
    (``torch.backends.cudnn.benchmark``): training crops have one fixed size, so the timing is paid once.

    Measured on an H200 (default widths, 128³, bf16 batch 2): 1.23 s per step without it, 0.43 s with it; the
    default heuristics had picked a weight-gradient kernel that took 66 % of the step. A process-wide setting.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for ``peak_memory_bytes`` on CUDA (the process RSS peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> tuple[Optional[int], str]:
    """(bytes, what was measured): CUDA max allocated, MPS driver allocation, else the process peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory()), "mps_driver_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return None, "unavailable"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_peak_rss"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure on any device."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
