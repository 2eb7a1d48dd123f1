"""The pair sampler: two different volumes per pair, crops and padding, seeding per rank and worker."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gvsl.data import NoUsableDataError, PairDataset, open_cache
from gvsl.data.pairs import random_crop


def _take(dataset, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(islice(iter(dataset), n))


def test_pairs_come_from_two_different_volumes(sample_cache: Path):
    """With a patch larger than every volume, a crop holds a whole volume: its sum tells which one."""
    sums = [float(e.array().sum()) for e in open_cache(sample_cache)]
    assert len(set(np.round(sums, 1))) == len(sums) == 4
    dataset = PairDataset(sample_cache, patch_size=(112, 112, 112), seed=3)
    seen = set()
    for a, b in _take(dataset, 12):
        assert a.shape == b.shape == (1, 112, 112, 112) and a.dtype == b.dtype == torch.float32
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
        i, j = (int(np.argmin(np.abs(np.asarray(sums) - float(x.sum())))) for x in (a, b))
        assert i != j
        seen |= {i, j}
    assert seen == {0, 1, 2, 3}


def test_random_crop_inside_and_padded():
    volume = np.arange(1, 6 * 7 * 8 + 1, dtype=np.uint16).reshape(6, 7, 8)
    rng = np.random.default_rng(0)
    crop = random_crop(volume, (4, 7, 10), rng)[0].numpy()
    assert crop.shape == (4, 7, 10)
    filled = crop[:, :, crop.any(axis=(0, 1))]  # the 8 columns that hold data, the 2 others are padding
    assert filled.shape == (4, 7, 8)
    start = int(round(filled[0, 0, 0] * 65535) - 1) // (7 * 8)
    np.testing.assert_allclose(filled, volume[start:start + 4] / 65535, rtol=1e-6)


def test_stream_is_a_pure_function_of_seed_rank_and_worker(sample_cache: Path):
    def first(**kw):
        return torch.stack([x for pair in _take(PairDataset(sample_cache, (32, 32, 32), **kw), 3) for x in pair])

    assert torch.equal(first(seed=1), first(seed=1))
    assert not torch.equal(first(seed=1), first(seed=2))
    assert not torch.equal(first(seed=1, rank=0, world_size=2), first(seed=1, rank=1, world_size=2))

    def loader_batches():
        loader = DataLoader(PairDataset(sample_cache, (32, 32, 32), seed=5), batch_size=2, num_workers=2)
        return [torch.cat(batch) for batch in islice(loader, 4)]

    run1, run2 = loader_batches(), loader_batches()
    assert run1[0].shape == (4, 1, 32, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(run1, run2))  # reproducible with workers
    assert not torch.equal(run1[0], run1[1])  # consecutive batches come from different workers


def test_folder_without_cache_is_reported(tmp_path: Path):
    with pytest.raises(NoUsableDataError, match="not a cache"):
        PairDataset(tmp_path)
