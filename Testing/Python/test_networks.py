"""GVSL network: published state dict layout, reference forward pass, geometry, gradients, bad input."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from real_images import mni_block

from gvsl.losses import local_ncc_loss, restoration_loss, smoothness_loss
from gvsl.networks import GVSL, affine_voxel_matrix, flow_sampled_voxels, warp_affine, warp_moving
from gvsl.networks.conventions import corrected_theta
from gvsl.networks.correlation import (
    SHARPNESS_RATE,
    FieldStage,
    MatchingStage,
    fit_affine,
    gaussian_smoothing,
    unit_length,
)

# The project's shared folder sits beside the repository (as in CI); GVSL_REFERENCE_DIR overrides.
REFERENCE = Path(os.environ.get("GVSL_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared" / "reference"))
SMALL = (8, 8, 16, 16, 16, 16, 16, 8, 8)


def reference_files():
    if not (REFERENCE / "gvsl_official_forward.npz").is_file():
        pytest.skip(f"reference forward pass not found in {REFERENCE}")
    sys.path.insert(0, str(REFERENCE))
    import deterministic

    return deterministic, np.load(REFERENCE / "gvsl_official_forward.npz")


def test_state_dict_matches_published_layout():
    if not (REFERENCE / "gvsl_official_state_dict.json").is_file():
        pytest.skip(f"published state dict layout not found in {REFERENCE}")
    spec = json.loads((REFERENCE / "gvsl_official_state_dict.json").read_text())["tensors"]
    state = GVSL().state_dict()
    assert list(state) == [t["key"] for t in spec]
    assert [list(v.shape) for v in state.values()] == [t["shape"] for t in spec]
    assert sum(v.numel() for v in state.values()) == 32_440_739


@pytest.fixture(scope="module")
def reference_run():
    deterministic, ref = reference_files()
    model = GVSL(conventions="original").eval()
    model.load_state_dict(deterministic.fill_state_dict(model.state_dict()), strict=True)
    return model, ref


OUTPUTS = ("res_A", "warp_BA", "aff_mat_BA", "flow_BA")


def test_reference_forward_float64(reference_run):
    """Exact arithmetic against the recorded float32 run of the original code.

    The recording is itself float32: its own distance to the float64 result is
    up to 7e-5 (res_A), 2e-4 (warp_BA), 1.3e-5 (aff_mat_BA) and 4.9e-4 (flow_BA),
    so those bounds (with margin) are what any faithful implementation can meet;
    an axis, padding or normalisation mistake shows as errors of 1e-2 and more.
    """
    model, ref = reference_run
    model = GVSL(conventions="original").eval().double()
    model.load_state_dict(reference_run[0].state_dict())
    with torch.no_grad():
        out = model(torch.from_numpy(ref["A"]).double(), torch.from_numpy(ref["B"]).double())
    tolerance = {"res_A": 1e-4, "warp_BA": 3e-4, "aff_mat_BA": 3e-5, "flow_BA": 6e-4}
    for name, got in zip(OUTPUTS, out):
        assert got.shape == ref[name].shape
        err = np.abs(got.numpy() - ref[name])
        assert err.max() < tolerance[name], (name, err.max())
        assert err.mean() < 2e-5, (name, err.mean())


def test_reference_forward_float32(reference_run):
    """The default float32 path (A' and B through the backbone as one batch) within float32 noise."""
    model, ref = reference_run
    with torch.no_grad():
        out = model(torch.from_numpy(ref["A"]), torch.from_numpy(ref["B"]))
    for name, got in zip(OUTPUTS, out):
        scale = np.abs(ref[name]).max()
        assert np.abs(got.numpy() - ref[name]).max() < 2.5e-3 * scale, name


def test_published_state_dict_loads_strict(tmp_path):
    from gvsl.checkpoints import load_gvsl

    state = GVSL(conventions="original").state_dict()
    torch.save(state, tmp_path / "GVSL_epoch_1000.pth")
    model, info = load_gvsl(tmp_path / "GVSL_epoch_1000.pth")
    assert info.kind == "published" and info.conventions == "original"
    assert info.channels == (32, 64, 128, 256, 512, 256, 128, 64, 32)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def small_pair(shape=(16, 32, 24), batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.from_numpy(mni_block(shape)).expand(batch, 1, *shape).clone()
    b = a.roll(2, dims=-1) + 0.05 * torch.rand(a.shape, generator=g)
    return a, b


def test_new_network_returns_the_identity_and_its_heads_learn():
    """The heads' last layers start at zero: a new network leaves B where it is; from the second step on every
    layer of the affine and deformable heads gets a gradient."""
    torch.manual_seed(0)
    model = GVSL(channels=SMALL)
    a, b = small_pair()
    _, warped, theta, flow = model(a, b)
    assert torch.equal(theta, identity_theta()) and not flow.any()
    assert torch.allclose(warped, b, atol=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        restored, warped, theta, flow = model(a, b)
        (local_ncc_loss(warped, a) + restoration_loss(restored, a) + smoothness_loss(flow)).backward()
        optimizer.step()
    for module in [model.f_conv, model.fc_rot, model.fc_scl, model.fc_trans, model.fc_shear, model.sp_conv,
                   model.out_flow]:
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_correlation_affine_is_the_identity_for_a_self_pair_and_learns():
    torch.manual_seed(0)
    model = GVSL(channels=SMALL, architecture="correlation")
    assert not hasattr(model, "fc_rot")
    a = torch.from_numpy(mni_block((32, 40, 36)))[None, None]
    _, warped, theta, flow = model(a, a)
    assert torch.allclose(theta, identity_theta(), atol=1e-5) and not flow.any()
    a, b = small_pair()
    restored, warped, theta, flow = model(a, b)
    (local_ncc_loss(warped, a) + restoration_loss(restored, a) + smoothness_loss(flow)).backward()
    for name, p in model.correlation_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fit_affine_recovers_a_known_affine():
    """Points of B placed by a known voxel affine ("corrected" convention) give back that affine."""
    shape = (40, 48, 36)
    g = torch.Generator().manual_seed(0)
    points_a = torch.rand(1, 32, 3, generator=g) * (torch.tensor(shape) - 1)
    theta = identity_theta()
    theta[0, :, :3] += 0.08 * (torch.rand(3, 3, generator=g) - 0.5)
    theta[0, :, 3] = torch.tensor([2.5, -4.0, 1.5])
    matrix = affine_voxel_matrix(theta, shape, "corrected")[0]
    points_b = points_a @ matrix[:3, :3].T + matrix[:3, 3]
    assert torch.allclose(fit_affine(points_a, points_b, torch.ones(1, 32), shape), theta, atol=1e-2)
    assert torch.allclose(corrected_theta(matrix[None], shape), theta, atol=1e-6)


@pytest.mark.parametrize("shift", [5, 16])
def test_correlation_affine_follows_a_shift_before_any_training(shift):
    """Position enters by construction: B = A moved by some voxels (inside a zero background) is found by an
    untrained head's block matching (random descriptors fall short by a fraction, not by the shift)."""
    torch.manual_seed(0)
    model = GVSL(channels=SMALL, architecture="correlation").eval()
    head = torch.from_numpy(mni_block((24, 32, 24)))
    a = torch.zeros(1, 1, 48, 64, 64)
    a[0, 0, 12:36, 16:48, 8:32] = head
    with torch.no_grad():
        theta = model(a, a.roll(shift, dims=-1))[2][0]
    assert 0.7 * shift < theta[2, 3] < 1.1 * shift
    assert theta[:2, 3].abs().max() < 0.2 * shift


def shifted_head_pair(shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A real head block in a zero background, and the same moved by ``shift`` voxels along w."""
    a = torch.zeros(1, 1, 48, 64, 64)
    a[0, 0, 12:36, 16:48, 8:32] = torch.from_numpy(mni_block((24, 32, 24)))
    return a, a.roll(shift, dims=-1)


def test_coarse_to_fine_stages_refine_the_trained_stage_and_keep_the_identity():
    """The trained stage given as a schedule is the default exactly; a self pair stays the identity under any
    schedule; more passes and a finer stage (its affine fitted to every second block's match) close the gap an
    untrained head's soft matches leave."""
    torch.manual_seed(0)
    model = GVSL(channels=SMALL, architecture="correlation").eval()
    a, b = shifted_head_pair(5)
    schedule = [MatchingStage(4, 3, 8), MatchingStage(2, 2, 4, stride=2)]
    with torch.no_grad():
        assert torch.equal(model(a, b)[2], model(a, b, [model.correlation_head.stage])[2])
        assert torch.allclose(model(a, a, schedule)[2], identity_theta(), atol=1e-5)
        trained, staged = model(a, b)[2][0], model(a, b, schedule)[2][0]
    assert abs(staged[2, 3] - 5) < 0.7 * abs(trained[2, 3] - 5)
    assert abs(staged[2, 3] - 5) < 0.5 and staged[:2, 3].abs().max() < 0.5
    for bad in (MatchingStage(0, 3, 4), MatchingStage(2, 2, 4, stride=0)):
        with pytest.raises(ValueError, match="positive pool, radius, passes and stride"):
            model(a, b, [bad])


def test_correlation_field_is_zero_for_a_self_pair_and_finds_a_local_shift():
    """The field from single voxels' matches: nothing for a self pair; for B = A moved by 2 voxels along w (the affine
    left at the identity), about +2 voxels along w where the head is (B sampled at p + flow shows A), and B warped
    by it resembles A better than B does. The untrained descriptors' matches are given a trained head's sharpness
    (log 2; 1.5 after the 16-minute pre-training of benchmarks/RESULTS.md)."""
    torch.manual_seed(0)
    model = GVSL(channels=SMALL, architecture="correlation").eval()
    head = model.correlation_head
    a, b = shifted_head_pair(2)
    stage = FieldStage(radius=1, passes=8, sigma_voxels=3.0, stride=2)
    with torch.no_grad():
        head.sharpness.fill_(2 / SHARPNESS_RATE)
        _, local = model.features(torch.cat([a, b]))
        local_a, local_b = local.chunk(2)
        assert head.displacement(local_a, local_a, identity_theta(), stage).abs().max() < 1e-4
        flow = head.displacement(local_a, local_b, identity_theta(), stage)
        _, _, _, from_forward = model(a, b, [MatchingStage(4, 3, 1)], stage)
    inside = flow[0, :, 16:32, 24:40, 12:28].flatten(1)
    assert 1.6 < inside[2].median() < 2.4 and inside[:2].abs().median() < 0.3
    assert local_ncc_loss(warp_moving(b, identity_theta(), flow, "corrected"), a) < local_ncc_loss(b, a) - 0.05
    assert from_forward.shape == flow.shape
    with pytest.raises(ValueError, match="positive radius"):
        head.displacement(local_a, local_b, identity_theta(), FieldStage(1, 2, 0.0))


def test_correlation_field_ignores_matches_that_land_in_padding():
    """B cut short along w (zeros beyond w = 26, as a moving scan that ends inside the fixed one): matches that land
    there get no weight. A support of zeros leaves no field at all, and next to the cut, where the unmasked field
    follows the padding's edge the wrong way (about -2 voxels for a true +2), the masked one keeps nearer the
    truth."""
    torch.manual_seed(0)
    model = GVSL(channels=SMALL, architecture="correlation").eval()
    head = model.correlation_head
    a, b = shifted_head_pair(2)
    b[..., 26:] = 0
    support = torch.zeros_like(b)
    support[..., :23] = 1
    stage = FieldStage(radius=1, passes=8, sigma_voxels=3.0, stride=2)
    with torch.no_grad():
        head.sharpness.fill_(2 / SHARPNESS_RATE)
        _, local = model.features(torch.cat([a, b]))
        local_a, local_b = local.chunk(2)
        plain = head.displacement(local_a, local_b, identity_theta(), stage)
        masked = head.displacement(local_a, local_b, identity_theta(), stage, support)
        assert head.displacement(local_a, local_b, identity_theta(), stage, torch.zeros_like(b)).abs().max() == 0
    near_cut = (slice(None), 2, slice(16, 32), slice(24, 40), slice(20, 24))
    assert plain[near_cut].median() < -1
    assert (masked[near_cut].median() - 2).abs() < (plain[near_cut].median() - 2).abs() - 1


def test_strided_soft_matches_are_the_full_matches_subsampled():
    """Matching every second block gives exactly those blocks' matches, also at the volume's edges; descriptors are
    unit length as F.normalize makes them."""
    torch.manual_seed(0)
    head = GVSL(channels=SMALL, architecture="correlation").correlation_head
    raw_a, raw_b = torch.randn(2, 1, 16, 9, 10, 11)
    desc_a, desc_b = unit_length(raw_a), unit_length(raw_b)
    assert torch.allclose(desc_a, F.normalize(raw_a, dim=1), atol=1e-6)
    with torch.no_grad():
        full, full_weight = head.soft_matches(desc_a, desc_b, 2, 2)
        strided, strided_weight = head.soft_matches(desc_a, desc_b, 2, 2, stride=2)
    assert strided.shape == (1, 5, 5, 6, 3)
    assert torch.allclose(strided, full[:, ::2, ::2, ::2], atol=1e-6)
    assert torch.allclose(strided_weight, full_weight[:, ::2, ::2, ::2], atol=1e-6)


def test_gaussian_smoothing_equals_scipy_with_repeated_edges():
    from scipy import ndimage

    x = torch.randn(1, 2, 12, 14, 16, dtype=torch.float64)
    expected = ndimage.gaussian_filter(x.numpy(), (0, 0, 1.5, 1.5, 1.5), mode="nearest", truncate=3.0)
    assert np.allclose(gaussian_smoothing(x, 1.5).numpy(), expected, atol=1e-12)


def test_batch_equals_single_calls():
    torch.manual_seed(0)
    model = GVSL(channels=SMALL).eval()
    a, b = small_pair(batch=4)
    a = a * torch.linspace(0.7, 1.0, 4).view(4, 1, 1, 1, 1)
    with torch.no_grad():
        batched = model(a, b)
        singles = [model(a[i : i + 1], b[i : i + 1]) for i in range(4)]
    for k in range(4):
        joined = torch.cat([s[k] for s in singles])
        assert torch.allclose(batched[k], joined, atol=1e-5), k


@pytest.mark.parametrize("channels", [SMALL, (16, 16, 32, 32, 64, 32, 32, 16, 16)])
def test_widths_are_configurable(channels):
    model = GVSL(channels=channels)
    assert model.f_conv.double_conv[0].in_channels == 2 * channels[4]
    assert model.sp_conv.double_conv[0].in_channels == 2 * channels[8]
    assert model.res_conv[0].in_channels == channels[8]
    a, b = small_pair()
    outs = model(a, b)
    assert [tuple(o.shape) for o in outs] == [(1, 1, 16, 32, 24), (1, 1, 16, 32, 24), (1, 3, 4), (1, 3, 16, 32, 24)]


def identity_theta(batch=1):
    return torch.eye(3, 4).expand(batch, 3, 4).clone()


def test_corrected_identity_reproduces_input():
    vol = torch.from_numpy(mni_block((20, 36, 28)))[None, None]
    flow = torch.zeros(1, 3, 20, 36, 28)
    out = warp_moving(vol, identity_theta(), flow, "corrected")
    assert (out - vol).abs().max() < 1e-5
    original = warp_moving(vol, identity_theta(), flow, "original")
    assert (original - vol).abs().max() > 1e-2  # the published code's quirk


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_corrected_translation_moves_along_intended_axis(axis):
    shape = (20, 36, 28)
    vol = torch.from_numpy(mni_block(shape))[None, None]
    t = 3
    theta = identity_theta()
    theta[0, axis, 3] = t
    out = warp_affine(vol, theta, "corrected")
    # output[p] = input[p + t e_axis] wherever p + t is inside
    src = [slice(None)] * 5
    dst = [slice(None)] * 5
    src[2 + axis] = slice(t, None)
    dst[2 + axis] = slice(0, shape[axis] - t)
    assert torch.allclose(out[tuple(dst)], vol[tuple(src)], atol=1e-5)
    flow = torch.zeros(1, 3, *shape)
    flow[:, axis] = t
    assert torch.allclose(warp_moving(vol, identity_theta(), flow, "corrected")[tuple(dst)], vol[tuple(src)], atol=1e-5)


def original_affine_warp(volume, theta):
    """The published code's affine warp, written independently with affine_grid."""
    norm = torch.ones(1, 3, 4, dtype=theta.dtype)
    norm[0, :, 3] = torch.tensor(volume.shape[2:], dtype=theta.dtype)
    grid = F.affine_grid(theta / norm, [volume.shape[0], 3, *volume.shape[2:]], align_corners=False)
    return F.grid_sample(volume, grid, align_corners=False)


def original_flow_warp(volume, flow):
    shape = flow.shape[2:]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=flow.dtype) for s in shape], indexing="ij"))[None]
    locs = grid + flow
    locs = torch.stack([2 * (locs[:, i] / (shape[i] - 1) - 0.5) for i in range(3)], dim=-1).flip(-1)
    return F.grid_sample(volume, locs, align_corners=False)


def random_theta(seed):
    g = torch.Generator().manual_seed(seed)
    rot = (torch.rand(1, 3, generator=g) - 0.5) * 0.6
    lin = torch.linalg.matrix_exp(torch.tensor([[0, -rot[0, 2], rot[0, 1]], [rot[0, 2], 0, -rot[0, 0]],
                                                [-rot[0, 1], rot[0, 0], 0]]))
    lin = lin * (1 + 0.2 * (torch.rand(3, generator=g) - 0.5))
    return torch.cat([lin, (torch.rand(3, 1, generator=g) - 0.5) * 4], dim=1)[None].float()


def test_original_affine_mapping_equals_affine_grid():
    vol = torch.from_numpy(mni_block((20, 36, 28)))[None, None]
    for seed in range(3):
        theta = random_theta(seed)
        assert torch.allclose(warp_affine(vol, theta, "original"), original_affine_warp(vol, theta), atol=2e-5)


def test_original_flow_mapping_equals_published_normalisation():
    vol = torch.from_numpy(mni_block((20, 36, 28)))[None, None]
    g = torch.Generator().manual_seed(1)
    flow = F.interpolate(torch.randn(1, 3, 4, 6, 5, generator=g) * 2, size=(20, 36, 28), mode="trilinear")
    ours = warp_moving(vol, identity_theta(), flow, "original")
    theirs = original_flow_warp(original_affine_warp(vol, identity_theta()), flow)
    assert torch.allclose(ours, theirs, atol=2e-5)


def test_corrected_affine_is_a_voxel_space_rotation():
    """A rotation about the centre keeps distances in voxels, also on a non-cubic grid."""
    shape = (20, 36, 28)
    angle = math.pi / 10
    theta = identity_theta()
    theta[0, 1:, 1:3] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = affine_voxel_matrix(theta, shape, "corrected")[0]
    p = torch.tensor([[3.0, 5.0, 7.0, 1.0], [10.0, 30.0, 2.0, 1.0]])
    q = p @ m.T
    assert torch.allclose((q[0] - q[1])[:3].norm(), (p[0] - p[1])[:3].norm(), atol=1e-5)
    centre = torch.tensor([9.5, 17.5, 13.5, 1.0])
    assert torch.allclose(centre @ m.T, centre, atol=1e-5)


def test_flow_sampled_voxels_conventions():
    flow = torch.zeros(1, 3, 16, 20, 24)
    flow[:, 2] = 1.5
    q = flow_sampled_voxels(flow, "corrected")
    assert q[0, 2, 0, 0, 0] == 1.5 and q[0, 0, 3, 0, 0] == 3
    q = flow_sampled_voxels(flow, "original")
    assert torch.isclose(q[0, 2, 0, 0, 0], torch.tensor(1.5 * 24 / 23 - 0.5))


@pytest.mark.parametrize(
    "a, match",
    [
        (torch.zeros(1, 16, 16, 16), "5-D"),
        (torch.zeros(1, 1, 16, 16, 16, dtype=torch.int16), "floating-point"),
        (torch.full((1, 1, 16, 16, 16), float("nan")), "NaN"),
        (torch.zeros(1, 1, 8, 16, 16), "at least 16"),
    ],
)
def test_bad_input_is_named(a, match):
    model = GVSL(channels=SMALL)
    with pytest.raises(ValueError, match=match):
        model(a, torch.zeros(1, 1, 16, 16, 16))


def test_mismatched_pair_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        GVSL(channels=SMALL)(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 32))


def test_correlation_needs_the_corrected_conventions():
    with pytest.raises(ValueError, match="corrected"):
        GVSL(channels=SMALL, conventions="original", architecture="correlation")
    with pytest.raises(ValueError, match="architecture"):
        GVSL(channels=SMALL, architecture="keymorph")


def test_unknown_conventions_refused():
    with pytest.raises(ValueError, match="conventions"):
        GVSL(channels=SMALL, conventions="voxelmorph")
