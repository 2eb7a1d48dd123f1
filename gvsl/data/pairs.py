"""The pair sampler: endless pairs of crops at corresponding positions of two cached volumes of one modality.

A pair must have something consistent for the matching loss to learn: both volumes are of one modality, and B is
cropped where A's crop lies once B is placed in A's frame by the initial alignment (``gvsl.data.alignment``), the
same rule ``gvsl match`` applies before the network sees a pair. What remains between the crops is the anatomical
difference between the two subjects, which is what the network is asked to find.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .alignment import centre_of_mass_mm, check_initial_alignment, initial_shift_mm
from .cache import CacheEntry, NoUsableDataError, from_storage, open_cache


def crop(stored: np.ndarray, start_dhw: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """A (1, D, H, W) float32 crop in [0, 1] of a stored (D, H, W) cache array whose first voxel is the array's voxel
    ``start_dhw`` (which may lie outside it); voxels outside the array are 0 (background)."""
    src, dst = [], []
    for n, p, s in zip(stored.shape, patch_size, start_dhw):
        low, high = max(0, s), min(n, s + p)
        src.append(slice(low, max(low, high)))
        dst.append(slice(low - s, low - s + max(0, high - low)))
    inside = all(s.start == 0 and s.stop == p for s, p in zip(dst, patch_size))
    out = (np.empty if inside else np.zeros)((1, *patch_size), np.float32)
    from_storage(stored[tuple(src)], out=out[(0, *dst)])  # reads only the crop from the memory map
    return torch.from_numpy(out)


def random_start(shape_dhw: Sequence[int], patch_size: Sequence[int], rng: np.random.Generator) -> list[int]:
    """A uniformly random crop start per axis: inside the volume where it is at least the patch, else a random
    offset that places the whole volume inside the patch (a negative start)."""
    return [int(rng.integers(0, n - p + 1)) if n >= p else -int(rng.integers(0, p - n + 1))
            for n, p in zip(shape_dhw, patch_size)]


def corresponding_offset_dhw(fixed: CacheEntry, moving: CacheEntry, fixed_centre_mm: np.ndarray,
                             moving_centre_mm: np.ndarray, alignment: str) -> np.ndarray:
    """Voxels (d, h, w) to add to an index of ``fixed``'s array to reach the corresponding index of ``moving``'s
    under the initial alignment (both on identity-direction grids of one spacing; rounded to whole voxels)."""
    shift = initial_shift_mm(fixed_centre_mm, moving_centre_mm, alignment)
    spacing = np.asarray(fixed.spacing, float)
    offset_xyz = (np.asarray(fixed.origin, float) + shift - np.asarray(moving.origin, float)) / spacing
    return np.rint(offset_xyz[::-1]).astype(int)


class PairDataset(IterableDataset):
    """Infinite stream of ``(a, b)``: float32 tensors (1, D, H, W) in [0, 1], crops of two different cached volumes
    of one modality at corresponding positions under ``alignment`` ("centres-of-mass" or "physical").

    A's crop lies at a uniformly random position (a volume smaller than the patch is placed whole at a random
    offset); B's crop is the same box moved into B by the initial alignment (zero outside B). The stream is a pure
    function of (``seed``, ``rank``, ``world_size``, DataLoader worker id, worker count): each (rank, worker) draws
    from its own generator ``numpy.random.default_rng([seed, rank, world_size, worker, workers])``. Creating a
    dataset reads only the manifest; arrays are memory-mapped on first use in each worker.
    """

    def __init__(self, cache_dir: Path | str, patch_size: Sequence[int] = (128, 128, 128), *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, alignment: str = "centres-of-mass") -> None:
        super().__init__()
        self.entries = open_cache(cache_dir)
        by_modality: dict[str, list[int]] = defaultdict(list)
        for n, entry in enumerate(self.entries):
            by_modality[entry.modality].append(n)
        # Volumes that have a partner of their modality; the first volume of a pair is drawn uniformly from them.
        self.partners = {n: [m for m in group if m != n] for group in by_modality.values() if len(group) > 1
                         for n in group}
        if not self.partners:
            counts = ", ".join(f"{len(g)} {m}" for m, g in sorted(by_modality.items()))
            raise NoUsableDataError(f"cache {cache_dir} holds {counts}: pairs need two volumes of one modality")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.alignment = check_initial_alignment(alignment)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.rank, self.world_size, worker, workers])
        arrays: dict[int, np.ndarray] = {}
        centres: dict[int, np.ndarray] = {}
        first_volumes = sorted(self.partners)
        while True:
            i = first_volumes[int(rng.integers(len(first_volumes)))]
            j = self.partners[i][int(rng.integers(len(self.partners[i])))]
            for n in (i, j):
                if n not in arrays:
                    arrays[n] = self.entries[n].stored()
                    entry = self.entries[n]
                    centres[n] = centre_of_mass_mm(from_storage(arrays[n]), entry.spacing, entry.origin)
            start = random_start(arrays[i].shape, self.patch_size, rng)
            offset = corresponding_offset_dhw(self.entries[i], self.entries[j], centres[i], centres[j], self.alignment)
            yield crop(arrays[i], start, self.patch_size), crop(arrays[j], np.add(start, offset), self.patch_size)
