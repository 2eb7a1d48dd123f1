"""Seconds per call of the GVSL augmentation on CPU (median of several calls after one warm-up).

Usage: python benchmarks/augment.py [--size 128] [--batch 1 2] [--repeats 7] [--threads N (default: torch's)]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from typing import Callable

import torch

from gvsl.augment import AugmentationConfig, GVSLAugmentation, corrupt_appearance, random_spatial_transform

ALWAYS_CORRUPT = AugmentationConfig(shuffle_prob=1.0, intensity_prob=1.0, inpaint_prob=1.0)


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds per call (CPU time is less sensitive to other processes)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def one_volume(a: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Corrupt and spatially transform one batch of volumes (what the performance bar counts)."""
    transform = random_spatial_transform(a.shape[2:], a.shape[0], generator, ALWAYS_CORRUPT)
    return transform.apply(corrupt_appearance(a, generator, ALWAYS_CORRUPT))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: left as torch sets it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    generator = torch.Generator().manual_seed(0)
    cases = {
        "one volume: all 3 corruptions + affine/elastic": lambda a, b: one_volume(a, generator),
        "GVSLAugmentation (A, A', B), all corruptions": lambda a, b: GVSLAugmentation(ALWAYS_CORRUPT)(a, b, generator),
        "GVSLAugmentation (A, A', B), paper probabilities": lambda a, b: GVSLAugmentation()(a, b, generator),
    }
    for batch in args.batch:
        a, b = (torch.rand(batch, 1, *(args.size,) * 3, generator=generator) for _ in range(2))
        for name, fn in cases.items():
            wall, cpu = median_seconds(partial(fn, a, b), args.repeats)
            print(f"{args.size}^3 batch {batch}  {name}: {wall:.3f} s wall, {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
