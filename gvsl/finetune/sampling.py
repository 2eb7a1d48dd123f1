"""Training patches with foreground oversampling, as a pure function of (seed, rank, iteration).

Hand-written rather than MONAI's ``RandCropByLabelClasses``: batches indexed by iteration make resume exact
whatever the number of loader workers, and a crop reads only its voxels from the memory-mapped cache.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from gvsl.data.cache import from_storage
from gvsl.finetune.cache import CachedCase
from gvsl.finetune.fusion import IGNORE_VALUE
from gvsl.train.state import derive_seed

MAX_INDICES = 50_000  # voxel positions remembered per case and class for foreground sampling
IGNORED_CLASS = -1  # the class index of ``IGNORE_VALUE`` voxels: no loss there


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[start : start + size]`` per axis, zero where the box leaves the array. Shapes (D, H, W)."""
    out = np.zeros(tuple(size), array.dtype)
    src, dst = [], []
    for s, n, p in zip(start, array.shape, size):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def class_lookup(cases: list[CachedCase], values: Sequence[int]) -> np.ndarray:
    """Label value -> class index (``values[k]`` -> k + 1; ``IGNORE_VALUE`` -> ``IGNORED_CLASS``; every other value
    of the cases' labels -> 0), an array to index label maps with."""
    lookup = np.zeros(max([0, *values, *(int(v) for c in cases for v in c.values)]) + 1, np.int64)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    if lookup.size > IGNORE_VALUE:
        lookup[IGNORE_VALUE] = IGNORED_CLASS
    return lookup


class PatchBatches(Dataset):
    """Item ``i``: the batch of iteration ``i`` for one rank: ``(image, label)`` with image (batch, 1, D, H, W)
    float32 in [0, 1] and label (batch, 1, D, H, W) int64 class indices (0 background).

    ``values``: label value of class 1, 2, ... (others become background). With probability ``foreground`` a
    patch is centred (up to a random shift of a quarter patch) on a voxel of a class drawn uniformly among the
    classes present in the case, so small structures are seen as often as large ones; otherwise it lies
    uniformly in the volume (volumes smaller than the patch are zero-padded).

    ``group_sizes``: the cases are consecutive groups of these sizes (the labelled cases, then the collection's
    pseudo-labelled scans); each patch comes from a group drawn uniformly, then a case of it. None: one group.
    """

    def __init__(self, cases: list[CachedCase], values: Sequence[int], patch: Sequence[int], batch: int,
                 foreground: float, seed: int, rank: int = 0, group_sizes: Optional[Sequence[int]] = None):
        self.cases, self.patch, self.batch = cases, tuple(int(p) for p in patch), int(batch)
        sizes = [len(cases)] if group_sizes is None else [int(n) for n in group_sizes if n]
        if sum(sizes) != len(cases):
            raise ValueError(f"group sizes {list(sizes)} do not add up to the {len(cases)} cases")
        self.group_starts = np.cumsum([0, *sizes])
        self.foreground, self.seed, self.rank = float(foreground), int(seed), int(rank)
        self.lookup = class_lookup(cases, values)
        rng = np.random.default_rng(seed)
        self.indices: list[list[np.ndarray]] = []  # [case][class - 1]: flat voxel indices (maybe empty)
        for case in cases:
            classes = self.lookup[case.label_array()]
            per_class = []
            for c in range(1, len(values) + 1):
                flat = np.flatnonzero(classes == c)
                per_class.append(np.sort(rng.choice(flat, MAX_INDICES, replace=False)) if flat.size > MAX_INDICES
                                 else flat)
            self.indices.append(per_class)
        self.images = [None] * len(cases)
        self.labels = [None] * len(cases)

    def __len__(self) -> int:
        return 2 ** 62

    def _arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.images[n] is None:  # opened lazily, so loader workers each map their own
            case = self.cases[n]
            self.images[n] = np.load(case.path / case.image, mmap_mode="r")
            self.labels[n] = np.load(case.path / case.label, mmap_mode="r")
        return self.images[n], self.labels[n]

    def start(self, n: int, rng: np.random.Generator) -> list[int]:
        """Corner (d, h, w) of a patch in case ``n``: foreground-centred or uniform."""
        shape = self.cases[n].shape
        present = [idx for idx in self.indices[n] if idx.size]
        if present and rng.random() < self.foreground:
            chosen = present[int(rng.integers(len(present)))]
            centre = np.unravel_index(int(chosen[int(rng.integers(chosen.size))]), shape)
            jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in self.patch]
            return [int(c) - p // 2 + j for c, p, j in zip(centre, self.patch, jitter)]
        return [int(rng.integers(0, s - p + 1)) if s >= p else -int(rng.integers(0, p - s + 1))
                for s, p in zip(shape, self.patch)]

    def patch_pair(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One patch of case ``n`` placed by ``start``: image (D, H, W) float32 in [0, 1], label (D, H, W) int64
        class indices."""
        image, label = self._arrays(n)
        start = self.start(n, rng)
        return from_storage(crop(image, start, self.patch)), self.lookup[crop(label, start, self.patch)]

    def draw_case(self, rng: np.random.Generator) -> int:
        """A case index: a group uniformly, then a case of it uniformly (one group: one draw, as before groups)."""
        if len(self.group_starts) == 2:
            return int(rng.integers(len(self.cases)))
        group = int(rng.integers(len(self.group_starts) - 1))
        return int(rng.integers(self.group_starts[group], self.group_starts[group + 1]))

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(derive_seed(self.seed, "patches", self.rank, int(iteration)))
        images, labels = zip(*(self.patch_pair(self.draw_case(rng), rng) for _ in range(self.batch)))
        return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)[:, None])
