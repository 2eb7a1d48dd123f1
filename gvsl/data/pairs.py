"""The pair sampler: endless pairs of random crops from two different cached volumes."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .cache import NoUsableDataError, from_storage, open_cache


def random_crop(stored: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
    """A (1, D, H, W) float32 crop in [0, 1] of a stored (D, H, W) cache array at a uniformly random position;
    along an axis where the volume is smaller than the patch, the whole volume is placed at a random offset in a
    zero-padded patch."""
    padded = any(n < p for n, p in zip(stored.shape, patch_size))
    out = (np.zeros if padded else np.empty)((1, *patch_size), np.float32)
    src, dst = [], []
    for n, p in zip(stored.shape, patch_size):
        if n >= p:
            start = int(rng.integers(0, n - p + 1))
            src.append(slice(start, start + p))
            dst.append(slice(0, p))
        else:
            offset = int(rng.integers(0, p - n + 1))
            src.append(slice(0, n))
            dst.append(slice(offset, offset + n))
    from_storage(stored[tuple(src)], out=out[(0, *dst)])  # reads only the crop from the memory map
    return torch.from_numpy(out)


class PairDataset(IterableDataset):
    """Infinite stream of ``(a, b)``: float32 tensors (1, D, H, W) in [0, 1], crops of two different cached volumes.

    The stream is a pure function of (``seed``, ``rank``, ``world_size``, DataLoader worker id, worker count):
    each (rank, worker) draws from its own generator ``numpy.random.default_rng([seed, rank, world_size, worker,
    workers])``, so ranks and workers draw different pairs and a run is reproducible. Creating a dataset reads only
    the manifest; arrays are memory-mapped on first use in each worker (only the crops are read).
    """

    def __init__(self, cache_dir: Path | str, patch_size: Sequence[int] = (128, 128, 128), *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.entries = open_cache(cache_dir)
        if len(self.entries) < 2:
            raise NoUsableDataError(f"cache {cache_dir} holds {len(self.entries)} usable volume; pairs need two")
        self.paths = [str(e.path) for e in self.entries]
        self.patch_size = tuple(int(p) for p in patch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.rank, self.world_size, worker, workers])
        arrays: dict[int, np.ndarray] = {}
        while True:
            i, j = (int(v) for v in rng.choice(len(self.paths), size=2, replace=False))
            for n in (i, j):
                if n not in arrays:
                    arrays[n] = np.load(self.paths[n], mmap_mode="r")
            yield random_crop(arrays[i], self.patch_size, rng), random_crop(arrays[j], self.patch_size, rng)
