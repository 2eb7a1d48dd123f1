"""Pair-sampling throughput: pairs of 128^3 crops per second from a cache of >= 20 volumes.

Usage: ``python benchmarks/pairs.py [--cache DIR] [--seconds 10] [--workers 2] [--batch 2]``. Without ``--cache``,
a cache of 20 volumes (10 sample subjects x CT/MR, 1 mm, about 170 x 200 x 170 voxels) is built in a temporary
folder first. Measures the dataset in this process, then through a DataLoader with worker processes, and, for
reference, the same DataLoader serving constant tensors (the cost of batching and inter-process transfer alone).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset

from gvsl.data import PairDataset, open_cache, prepare_cache
from gvsl.sample_data import write_sample_collection


def pairs_per_second(batches, pairs_per_batch: int, seconds: float, warmup: int = 2) -> tuple[float, float]:
    """Drain ``warmup`` batches, then count pairs for about ``seconds``: (pairs per wall-clock second, CPU
    milliseconds of this process per pair)."""
    batches = iter(batches)
    for _ in islice(batches, warmup):
        pass
    start, cpu, pairs = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        next(batches)
        pairs += pairs_per_batch
    return pairs / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / pairs


class ConstantPairs(IterableDataset):
    """Endless pairs of one preallocated tensor: what a DataLoader costs without any sampling."""

    def __init__(self, patch: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch = patch

    def __iter__(self):
        volume = torch.zeros((1, *self.patch))
        while True:
            yield volume, volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="existing cache (default: build one of 20 sample volumes)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache
        if cache is None:
            cache = Path(tmp) / "cache"
            start = time.perf_counter()
            write_sample_collection(Path(tmp) / "dicom", n_subjects=10)
            prepare_cache(Path(tmp) / "dicom", cache, workers=args.workers, progress=False)
            print(f"built a cache in {time.perf_counter() - start:.1f} s")
        entries = open_cache(cache)
        shapes = sorted(tuple(e.shape) for e in entries)
        print(f"cache: {len(entries)} volumes, shapes {shapes[0]} .. {shapes[-1]}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f}")
        patch = (args.patch,) * 3
        direct, cpu_ms = pairs_per_second(PairDataset(cache, patch), 1, args.seconds)
        print(f"in-process: {direct:.1f} pairs/s of {args.patch}^3 ({cpu_ms:.1f} ms CPU per pair)")
        for workers in sorted({0, args.workers}):
            for name, dataset in (("PairDataset", PairDataset(cache, patch)), ("constant tensors",
                                                                               ConstantPairs(patch))):
                loader = DataLoader(dataset, batch_size=args.batch, num_workers=workers)
                loaded, _ = pairs_per_second(loader, args.batch, args.seconds)
                print(f"DataLoader(batch_size={args.batch}, num_workers={workers}) over {name}: {loaded:.1f} "
                      f"pairs/s of {args.patch}^3")


if __name__ == "__main__":
    main()
