"""Benchmark one GVSL pre-training step (augmentation + forward + loss + backward + Adam), as ``gvsl pretrain`` runs it.

Reports seconds per iteration (wall clock, and this process's CPU seconds: less
sensitive to other jobs on a shared machine), iterations/s and peak memory (process peak RSS
on CPU, CUDA max allocated on GPU); with ``--flops``, the FLOPs of one step
(torch.utils.flop_counter) and the achieved fraction of the device's peak.
Pairs come from pre-loaded random tensors, or with ``--data CACHE`` from the
training data loader (compare both to check the loader keeps up).

    python benchmarks/step.py --patch 64 --batch 1                      # default widths, CPU
    python benchmarks/step.py --patch 64 --data CACHE --workers 2       # with the data loader
    python benchmarks/step.py --device cuda --precision bf16 --patch 128 --batch 2 --flops
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch

from gvsl.augment import AugmentationConfig, GVSLAugmentation
from gvsl.networks import DEFAULT_CHANNELS, GVSL
from gvsl.pretrain.engine import pair_batches
from gvsl.pretrain.step import TrainStep, enable_activation_checkpointing
from gvsl.train.config import TrainConfig, parse_channels, parse_patch
from gvsl.train.device import (
    peak_memory_bytes,
    reset_peak_memory,
    select_device,
    select_precision,
    use_channels_last,
)
from gvsl.train.distributed import DistributedContext

# Dense peak TFLOP/s (bf16/fp16 tensor cores, no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
               "A10G": 125.0, "RTX 4090": 165.0, "V100": 125.0}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The options from ``argv`` (default: the command line)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", type=parse_patch, default=(64, 64, 64), help="one size or D,H,W (default 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=parse_channels, default=DEFAULT_CHANNELS, help="nine widths (default: paper)")
    p.add_argument("--architecture", choices=("paper", "correlation"), default="paper",
                   help="affine head (default paper, as the step numbers in RESULTS.md)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="default: on CPU when all widths >= 32; contiguous on CUDA")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--data", type=Path, help="a prepared cache: draw pairs through the training data loader")
    p.add_argument("--workers", type=int, default=2, help="data loader processes with --data")
    p.add_argument("--flops", action="store_true", help="count FLOPs of one step and report the peak fraction")
    p.add_argument("--peak-tflops", type=float, help="device peak for --flops (default: looked up for known GPUs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def pair_source(args: argparse.Namespace, device: torch.device):
    """An endless iterator of (a, b) batches: the training loader, or the same pre-loaded random pair."""
    if args.data is not None:
        config = TrainConfig(patch=args.patch, batch=args.batch, workers=args.workers,
                             checkpoint_every=args.warmup + args.iterations + 2)
        return pair_batches(args.data, config, DistributedContext(), device, 0)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(args.batch, 1, *args.patch, generator=generator).to(device) for _ in range(2))
    return iter(lambda: (a, b), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time one configuration (``parse_args``'s options, ``threads`` aside): the record ``main`` prints."""
    device = select_device(args.device)
    precision = select_precision(args.precision, device)
    torch.manual_seed(0)
    model = GVSL(channels=args.channels, architecture=args.architecture).to(device)
    args.channels_last = use_channels_last(args.channels_last, device, args.channels, precision)
    if args.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    step = TrainStep(model, optimizer, scaler, GVSLAugmentation(AugmentationConfig()), precision, device,
                     channels_last=args.channels_last)
    pairs = pair_source(args, device)
    generator = torch.Generator(device).manual_seed(0)
    for _ in range(args.warmup):
        step(*next(pairs), generator)
    synchronize(device)
    reset_peak_memory(device)
    times, cpu_start = [], time.process_time()
    for _ in range(args.iterations):
        start = time.perf_counter()
        float(step(*next(pairs), generator).losses["loss"])  # waits for the step
        synchronize(device)
        times.append(time.perf_counter() - start)
    cpu_per_it = (time.process_time() - cpu_start) / args.iterations
    memory, memory_kind = peak_memory_bytes(device)
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "precision": precision.name, "architecture": args.architecture, "patch": list(args.patch),
        "batch": args.batch, "channels": list(args.channels),
        "channels_last": args.channels_last, "activation_checkpointing": args.activation_checkpointing,
        "data": "loader" if args.data else "preloaded", "workers": args.workers if args.data else None,
        "threads": torch.get_num_threads(), "s_per_it_mean": statistics.mean(times),
        "s_per_it_median": statistics.median(times), "it_per_s": 1 / statistics.mean(times),
        "process_cpu_s_per_it": cpu_per_it,
        "peak_memory_bytes": memory, "memory_kind": memory_kind,
    }
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step(*next(pairs), generator)
        flops = counter.get_total_flops()
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in result["device"]), None)
        result.update(flops_per_it=flops, achieved_tflops=flops / statistics.mean(times) / 1e12,
                      peak_tflops=peak, peak_fraction=flops / statistics.mean(times) / 1e12 / peak if peak else None)
    return result


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
