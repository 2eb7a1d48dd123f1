"""gvsl.augment: reproducibility, shared spatial transform, conventions, corruptions, elastic field statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from real_images import mni_block

from gvsl.augment import (
    AugmentationConfig,
    GVSLAugmentation,
    SpatialTransform,
    affine_voxel_map,
    bezier_intensity_map,
    corrupt_appearance,
    elastic_displacement,
    inpaint,
    local_pixel_shuffle,
    random_spatial_transform,
)
from gvsl.augment.appearance import box_edges
from gvsl.networks.conventions import identity_grid

SHAPE = (32, 40, 36)  # non-cubic on purpose
ALWAYS_CORRUPT = AugmentationConfig(shuffle_prob=1.0, intensity_prob=1.0, inpaint_prob=1.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small volumes: on a shared CPU, thread synchronisation would cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two different real brain blocks (MNI152 T1, values in [0, 1]), each (1, 1, 32, 40, 36)."""
    a = torch.from_numpy(mni_block(SHAPE))[None, None]
    b = torch.from_numpy(mni_block((SHAPE[0], SHAPE[1] + 8, SHAPE[2]))[:, 8:])[None, None]
    return a, b


def translation(shape, trans) -> SpatialTransform:
    """A pure translation of ``trans`` voxels along (d, h, w), batch of one."""
    matrix = affine_voxel_map(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([trans]), torch.zeros(1, 6), shape)
    return SpatialTransform(matrix, None, tuple(shape))


def test_same_seed_same_output_and_different_seed_different_output(pair):
    a, b = pair
    a_before, b_before = a.clone(), b.clone()
    aug = GVSLAugmentation(ALWAYS_CORRUPT)
    first, again, other = aug(a, b, seeded(1)), aug(a, b, seeded(1)), aug(a, b, seeded(2))
    for x, y, z in zip(first, again, other):
        assert x.shape == a.shape and x.dtype == a.dtype
        assert torch.equal(x, y)
        assert not torch.allclose(x, z, atol=1e-3)
    assert torch.equal(a, a_before) and torch.equal(b, b_before)


def test_one_spatial_transform_for_a_corrupted_a_and_b(pair):
    a, _ = pair
    # a and b equal: their outputs are equal only if they share the transform.
    out_a, out_corrupted, out_b = GVSLAugmentation(ALWAYS_CORRUPT)(a, a.clone(), seeded(3))
    assert torch.equal(out_a, out_b)
    assert (out_corrupted - out_a).abs().max() > 0.1
    # A' is the corrupted A under the same transform: the pipeline equals its pieces drawn in the same order.
    g = seeded(3)
    transform = random_spatial_transform(SHAPE, 1, g, ALWAYS_CORRUPT)
    expected = transform.apply(a, corrupt_appearance(a, g, ALWAYS_CORRUPT), a)
    for x, y in zip((out_a, out_corrupted, out_b), expected):
        assert torch.equal(x, y)
    # Without corruption, A' is A.
    clean = GVSLAugmentation(AugmentationConfig(shuffle_prob=0, intensity_prob=0, inpaint_prob=0))(a, a, seeded(3))
    assert torch.equal(clean[0], clean[1]) and not torch.allclose(clean[0], a, atol=1e-2)


def test_identity_configuration_returns_inputs(pair):
    a, b = pair
    for out, x in zip(GVSLAugmentation(AugmentationConfig.identity())(a, b, seeded(4)), (a, a, b)):
        torch.testing.assert_close(out, x, rtol=0, atol=1e-5)  # float rounding of the voxel -> grid mapping only


@pytest.mark.parametrize("axis,t", [(0, 3), (1, -4), (2, 5)])
def test_translation_samples_input_at_p_plus_t(pair, axis, t):
    a, _ = pair
    trans = [0.0, 0.0, 0.0]
    trans[axis] = float(t)
    (out,) = translation(SHAPE, trans).apply(a)
    n = SHAPE[axis]
    inside = slice(max(0, -t), n - max(0, t))  # output voxels whose p + t is in the volume
    torch.testing.assert_close(out.narrow(2 + axis, inside.start, inside.stop - inside.start),
                               a.narrow(2 + axis, inside.start + t, inside.stop - inside.start), rtol=0, atol=1e-5)
    outside = torch.ones(n, dtype=torch.bool)
    outside[inside] = False
    assert out.index_select(2 + axis, torch.nonzero(outside).squeeze(1)).abs().max() < 1e-5  # zero padding


def test_rotation_about_centre_keeps_sphere_volume_and_centroid():
    shape = (40, 40, 40)
    p = identity_grid(shape, torch.zeros(1)) - (40 - 1) / 2
    r = p.norm(dim=1, keepdim=True)
    sphere = (12.0 - r).clamp(0, 1)  # one-voxel soft edge, so trilinear sampling does not alias
    config = AugmentationConfig(scale_range=(1.0, 1.0), translation_fraction=0.0, shear_max_rad=0.0,
                                elastic_alpha=(0.0, 0.0))
    transform = random_spatial_transform(shape, 4, seeded(5), config)
    (rotated,) = transform.apply(sphere.expand(4, -1, -1, -1, -1))
    assert not torch.allclose(transform.matrix[:, :3, :3], torch.eye(3).expand(4, 3, 3), atol=0.05)
    volume = rotated.sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(volume, sphere.sum().expand(4), rtol=0.01, atol=0)
    centroid = (rotated * p).sum(dim=(2, 3, 4)) / volume[:, None]
    assert centroid.abs().max() < 0.05


def test_pixel_shuffle_permutes_within_boxes():
    shape = (30, 36, 40)
    index = torch.arange(math.prod(shape), dtype=torch.float32).view(1, 1, *shape)
    out = local_pixel_shuffle(index, seeded(6), box_fraction=1 / 10, coverage=0.7)
    assert torch.equal(out.flatten().sort().values, index.flatten())  # a permutation of the voxels
    source = torch.stack(torch.unravel_index(out.flatten().long(), shape))
    moved = (source - identity_grid(shape, source)[0].flatten(1)).abs()
    assert (moved.amax(dim=1) < torch.tensor(box_edges(shape, 1 / 10))).all()  # each value stays in its box
    changed = (moved.amax(dim=0) > 0).float().mean()
    # 70% of the cells are shuffled; the border (< 2 edges per axis) is not, and 1/48 of the voxels stay by chance.
    assert 0.35 < changed < 0.7


def test_pixel_shuffle_on_real_image_keeps_histogram_and_changes_image(pair):
    a, _ = pair
    batch = torch.cat([a, a])
    out = local_pixel_shuffle(batch, seeded(7), apply=[True, False])
    assert torch.equal(out[0].flatten().sort().values, a.flatten().sort().values)
    assert (out[0] - a[0]).abs().mean() > 0.01
    assert torch.equal(out[1], a[0])


def test_bezier_mapping_is_monotone_from_0_to_1():
    x = torch.linspace(0, 1, 4097).view(1, 1, -1, 1, 1).expand(64, -1, -1, -1, -1)
    y = bezier_intensity_map(x, seeded(8))
    assert (y.diff(dim=2) >= 0).all()
    assert (y[:, :, 0] == 0).all() and (y[:, :, -1] == 1).all()
    assert y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3  # every curve bends
    assert torch.equal(bezier_intensity_map(x[:2], seeded(8), apply=[False, True])[0], x[0])


def test_inpainting_fills_only_its_box_with_uniform_noise():
    shape = (30, 40, 50)
    x = torch.full((3, 1, *shape), -1.0)  # U[0, 1] noise never equals -1
    out = inpaint(x, seeded(9), max_boxes=1, continue_prob=1.0, box_fraction=(1 / 10, 1 / 5))
    for sample in out:
        changed = sample[0] != -1
        idx = torch.nonzero(changed)
        lo, hi = idx.amin(dim=0), idx.amax(dim=0) + 1
        edges = (hi - lo).tolist()
        assert changed.sum() == math.prod(edges)  # the changed voxels are exactly one box
        assert all(round(s / 10) <= e <= round(s / 5) for s, e in zip(shape, edges))
        assert sample[0][changed].min() >= 0 and sample[0][changed].max() <= 1
    assert not torch.equal(out[0], out[1])
    assert torch.equal(inpaint(x, seeded(9), max_boxes=0), x)


def full_resolution_statistics(sigma: float, alpha: float, lag: int) -> tuple[float, float]:
    """Std and lag correlation of ``alpha * G_sigma * U[-1, 1]`` noise at full resolution (exact, discrete kernel)."""
    radius = math.ceil(4 * sigma)
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    energy = float((g**2).sum())
    return alpha / math.sqrt(3) * energy**1.5, float((g[lag:] * g[:-lag]).sum()) / energy


@pytest.mark.parametrize("sigma", [10.0, 13.0])
def test_coarse_elastic_field_matches_full_resolution_statistics(sigma):
    # 16 fields of 64^3: the std estimate varies by ~3% between seeds (bias of the coarse grid: ~2% low).
    shape, batch, alpha, lag = (64, 64, 64), 16, 400.0, 10
    nodes = elastic_displacement(shape, torch.full((batch,), alpha), torch.full((batch,), sigma), seeded(10))
    assert nodes.shape == (batch, 3, 17, 17, 17)
    field = SpatialTransform(torch.eye(4).expand(batch, 4, 4), nodes, shape).voxels() - identity_grid(
        shape, nodes)
    expected_std, expected_corr = full_resolution_statistics(sigma, alpha, lag)
    power = field.square().mean()
    assert abs(power.sqrt().item() / expected_std - 1) < 0.1
    for axis in range(3):
        n = shape[axis] - lag
        corr = (field.narrow(2 + axis, 0, n) * field.narrow(2 + axis, lag, n)).mean() / power
        assert abs(corr.item() - expected_corr) < 0.05


def test_samples_of_a_batch_get_their_own_parameters(pair):
    a, b = pair
    outputs = GVSLAugmentation(ALWAYS_CORRUPT)(torch.cat([a, a]), torch.cat([b, b]), seeded(11))
    for out in outputs:
        assert (out[0] - out[1]).abs().mean() > 0.01
