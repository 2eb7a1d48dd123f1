"""The pair sampler: two different volumes of one modality per pair, crops at corresponding positions, padding,
seeding per rank and worker."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from real_images import mni_block
from torch.utils.data import DataLoader

from gvsl.data import NoUsableDataError, PairDataset, PrepareConfig, open_cache, prepare_cache
from gvsl.data.pairs import crop


def _take(dataset, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(islice(iter(dataset), n))


def test_pairs_come_from_two_different_volumes_of_one_modality(sample_cache: Path):
    """With a patch larger than every volume, A's crop holds a whole volume: its sum tells which one. B is A's
    only partner of its modality, cropped where it corresponds (so possibly cut at the patch's edge)."""
    entries = open_cache(sample_cache)
    sums = [float(e.array().sum()) for e in entries]
    assert len(set(np.round(sums, 1))) == len(sums) == 4
    assert sorted(e.modality for e in entries) == ["CT", "CT", "MR", "MR"]
    dataset = PairDataset(sample_cache, patch_size=(112, 112, 112), seed=3)
    seen = set()
    for a, b in _take(dataset, 12):
        assert a.shape == b.shape == (1, 112, 112, 112) and a.dtype == b.dtype == torch.float32
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
        i = int(np.argmin(np.abs(np.asarray(sums) - float(a.sum()))))
        assert float(a.sum()) == pytest.approx(sums[i], rel=1e-5)
        (j,) = [n for n, e in enumerate(entries) if n != i and e.modality == entries[i].modality]
        assert 0.5 * sums[j] < float(b.sum()) <= sums[j] * (1 + 1e-5)
        seen |= {i}
    assert seen == {0, 1, 2, 3}


def test_crop_inside_and_padded():
    volume = np.arange(1, 6 * 7 * 8 + 1, dtype=np.uint16).reshape(6, 7, 8)
    inside = crop(volume, (1, 2, 3), (4, 5, 5))[0].numpy()
    np.testing.assert_allclose(inside, volume[1:5, 2:7, 3:8] / 65535, rtol=1e-6)
    padded = crop(volume, (-2, 3, 5), (4, 7, 10))[0].numpy()
    assert padded.shape == (4, 7, 10)
    expected = np.zeros((4, 7, 10), np.float32)
    expected[2:, :4, :3] = volume[:2, 3:, 5:] / 65535
    np.testing.assert_allclose(padded, expected, rtol=1e-6)
    assert not crop(volume, (10, 0, 0), (4, 4, 4)).any()  # wholly outside: background


def write_volume(array: np.ndarray, origin, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin(tuple(float(o) for o in origin))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def moved_copies(tmp_path_factory) -> dict[str, Path]:
    """Caches of two MR volumes holding the same real anatomy: "origin" has it at the same physical place on another
    grid (cropped, its origin moved by whole voxels: one physical frame, like two scans of one session);
    "content" moves the anatomy inside an unmoved grid (another frame, like two patients on two scanners)."""
    root = tmp_path_factory.mktemp("moved")
    head = np.pad(mni_block((40, 48, 40)), 12)  # zero background around it, as in a real head scan
    moved_content = np.zeros_like(head)
    moved_content[5:, :-7, 3:] = head[:-5, 7:, :-3]
    caches = {}
    for name, second, origin in (("origin", head[2:, 7:, 4:], (8.0, 14.0, 4.0)),
                                 ("content", moved_content, (0.0, 0.0, 0.0))):
        (root / name).mkdir()
        write_volume(head, (0.0, 0.0, 0.0), root / name / "a.nrrd")
        write_volume(second, origin, root / name / "b.nrrd")
        prepare_cache(root / name, root / f"{name}-cache", config=PrepareConfig(target_spacing=(2.0, 2.0, 2.0)),
                      progress=False)
        caches[name] = root / f"{name}-cache"
    return caches


@pytest.mark.parametrize("cache, alignment, corresponding", [
    ("origin", "physical", True), ("origin", "centres-of-mass", True),
    ("content", "physical", False), ("content", "centres-of-mass", True)])
def test_crops_lie_at_corresponding_positions(moved_copies, cache, alignment, corresponding):
    """Both crops show the same anatomy when the initial alignment undoes the move; the physical frame does not
    undo a move of the anatomy inside the grid."""
    dataset = PairDataset(moved_copies[cache], patch_size=(48, 40, 56), seed=0, alignment=alignment)
    for a, b in _take(dataset, 6):
        assert float(a.sum()) > 100  # the crops hold anatomy
        assert torch.allclose(a, b, atol=1e-4) == corresponding


def test_pairs_need_two_volumes_of_one_modality(tmp_path: Path, moved_copies):
    ct = sitk.GetImageFromArray((np.pad(mni_block((32, 32, 32)), 8) * 2000 - 1000).astype(np.float32))  # air around
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(sitk.ReadImage(str(moved_copies["origin"].parent / "origin" / "a.nrrd")), str(tmp_path / "mr.nrrd"))
    prepare_cache(tmp_path, tmp_path / "cache", progress=False)
    with pytest.raises(NoUsableDataError, match="1 CT, 1 MR: pairs need two volumes of one modality"):
        PairDataset(tmp_path / "cache")


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
