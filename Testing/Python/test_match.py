"""gvsl.match: exact geometry against oracle fields, warping, labels, feature similarity, metrics and the CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pydicom.uid import generate_uid
from real_images import mni_block

from gvsl.checkpoints import SEGMENTATION_FORMAT, gvsl_payload, save_checkpoint
from gvsl.cli import main
from gvsl.data import PrepareConfig
from gvsl.io.reading import read_image
from gvsl.match import MatchConfig, RefineConfig, match_volumes, network_to_physical, prepare_network_inputs
from gvsl.networks import GVSL, affine_voxel_matrix, flow_sampled_voxels, warp_moving
from gvsl.sample_data import write_dicom_series

CHANNELS = (8, 8, 16, 16, 16, 16, 16, 8, 8)
NETWORK_ONLY = RefineConfig(iterations=0)
CONFIG = MatchConfig(prepare=PrepareConfig(target_spacing=(2.5, 2.5, 2.5)), max_size_xyz=(64, 64, 64),
                     refine=NETWORK_ONLY)


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """3x3 rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * cross + (1 - math.cos(a)) * cross @ cross


def make_image(array_kji: np.ndarray, spacing, origin, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji.astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def fixed_image() -> sitk.Image:
    """Anisotropic spacing, oblique direction."""
    return make_image(mni_block((36, 44, 40)), (2.0, 1.6, 2.4), (12.0, -30.0, 7.0), rotation((1, 2, 0.5), 20))


def moving_image() -> sitk.Image:
    """Another size, spacing, origin and direction."""
    return make_image(mni_block((40, 40, 44)), (1.8, 2.2, 2.0), (-40.0, 15.0, -20.0), rotation((0, 1, 1), -12))


def known_transform(fixed: sitk.Image, moving: sitk.Image, domain: sitk.Image) -> sitk.CompositeTransform:
    """Fixed LPS -> moving LPS: an affine (rotation, scaling, centres matched) after a smooth B-spline deformation.

    The B-spline is defined over ``domain`` plus a margin (outside its domain a B-spline transform moves nothing,
    which would put a step into the oracle).
    """
    centre = lambda im: np.asarray(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))  # noqa: E731
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre(fixed).tolist())
    affine.SetMatrix((rotation((1, -1, 2), 8) @ np.diag([1.05, 0.95, 1.02])).ravel().tolist())
    affine.SetTranslation((centre(moving) - centre(fixed) + [1.5, -2.0, 0.7]).tolist())
    bspline = sitk.BSplineTransformInitializer(sitk.ConstantPad(domain, [8] * 3, [8] * 3), [4, 4, 4])
    params = np.random.default_rng(0).uniform(-4, 4, len(bspline.GetParameters()))
    bspline.SetParameters(params.tolist())
    return sitk.CompositeTransform([affine, bspline])


def voxel_to_mm(grid: sitk.Image) -> np.ndarray:
    """(4, 4) map of an index (d, h, w, 1) to LPS, written independently of gvsl.match."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing()) @ np.eye(3)[::-1]
    m[:3, 3] = grid.GetOrigin()
    return m


def oracle_network_outputs(truth: sitk.Transform, fixed_net: sitk.Image, moving_net: sitk.Image, conventions: str):
    """(theta, flow) with which the network would sample the moving network grid where ``truth`` says.

    theta is an arbitrary mild affine; the flow is solved so that M(g(p)) = G_m^-1(truth(G_f(p))), using only that
    the field's voxel map g is affine in the flow, channel by channel.
    """
    shape = tuple(reversed(fixed_net.GetSize()))
    disp = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
        truth, sitk.sitkVectorFloat64, fixed_net.GetSize(), fixed_net.GetOrigin(), fixed_net.GetSpacing(),
        fixed_net.GetDirection()))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), axis=-1)
    fixed_mm = grid @ voxel_to_mm(fixed_net)[:3, :3].T + voxel_to_mm(fixed_net)[:3, 3]
    target_mm = fixed_mm + disp
    to_moving = np.linalg.inv(voxel_to_mm(moving_net))
    q = target_mm @ to_moving[:3, :3].T + to_moving[:3, 3]  # moving voxels (d, h, w)
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, :, :3] = torch.from_numpy(rotation((0.3, 1, -0.4), 6) * 1.03)
    theta[0, :, 3] = torch.tensor([0.8, -1.5, 0.4])
    matrix = affine_voxel_matrix(theta, shape, conventions)[0].numpy()
    inverse = np.linalg.inv(matrix)
    g = torch.from_numpy(np.moveaxis(q @ inverse[:3, :3].T + inverse[:3, 3], -1, 0)[None].copy())
    g0 = flow_sampled_voxels(torch.zeros_like(g), conventions)
    per_unit = flow_sampled_voxels(torch.ones_like(g), conventions) - g0
    return theta, (g - g0) / per_unit


def landmarks_mm(image: sitk.Image, count: int = 200) -> np.ndarray:
    """Random physical points inside the image's voxel-centre box."""
    rng = np.random.default_rng(1)
    index = rng.uniform(0, 1, (count, 3)) * (np.asarray(image.GetSize()) - 1)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])


def network_grids(fixed: sitk.Image, moving: sitk.Image):
    """The frame grid twice (fixed and moving network images share it) and the initial alignment."""
    inputs = prepare_network_inputs(fixed, moving, "MR", "MR", CONFIG)
    return inputs.fixed, inputs.moving, inputs.initial


def in_frame(truth: sitk.Transform, initial: sitk.Transform) -> sitk.Transform:
    """``truth`` (fixed LPS -> moving LPS) followed by the inverse initial alignment: what the network must find."""
    return sitk.CompositeTransform([initial.GetInverse(), truth])


def zero_head_network() -> GVSL:
    """A small new GVSL: its last layers start at zero, so its Z-matching head says identity affine and zero field."""
    torch.manual_seed(0)
    return GVSL(CHANNELS)


def random_head_network(conventions: str = "corrected", seed: int = 1) -> GVSL:
    """A small GVSL whose heads' last layers are random too (a network that moves points somewhere)."""
    torch.manual_seed(seed)
    model = GVSL(CHANNELS, conventions=conventions)
    with torch.no_grad():
        for layer in (model.fc_rot, model.fc_scl, model.fc_trans, model.fc_shear, model.out_flow):
            layer.weight.normal_(0, 0.05)
            layer.bias.normal_(0, 0.05)
    return model


def interior_mask(sampled: sitk.Image, fixed_net: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Fixed network voxels that ``transform`` sends two voxels inside ``sampled``'s grid (no zero padding reaches
    the interpolation)."""
    ones = np.ones(tuple(reversed(sampled.GetSize())))
    ones[[0, 1, -2, -1], :, :] = ones[:, [0, 1, -2, -1], :] = ones[:, :, [0, 1, -2, -1]] = 0
    image = sitk.GetImageFromArray(ones)
    image.CopyInformation(sampled)
    inside = sitk.Resample(image, fixed_net, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(inside) > 1 - 1e-9


def ramp_like(grid: sitk.Image) -> sitk.Image:
    """A float64 image linear in the voxel index, on ``grid``."""
    d, h, w = np.meshgrid(*[np.arange(n, dtype=float) for n in reversed(grid.GetSize())], indexing="ij")
    ramp = sitk.GetImageFromArray(0.3 * d - 0.7 * h + 0.5 * w)
    ramp.CopyInformation(grid)
    return ramp


# --- geometry with oracle fields ---------------------------------------------------------------------------------

def test_composite_applies_last_transform_first():
    shift = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    scale = sitk.ScaleTransform(3, (2.0, 2.0, 2.0))
    assert sitk.CompositeTransform([shift, scale]).TransformPoint((1.0, 1.0, 1.0)) == (3.0, 2.0, 2.0)


@pytest.mark.parametrize("conventions", ["corrected", "original"])
def test_oracle_field_maps_landmarks_like_simpleitk(conventions):
    fixed, moving = fixed_image(), moving_image()
    fixed_net, moving_net, initial = network_grids(fixed, moving)
    assert fixed_net.GetSize() == moving_net.GetSize()
    truth = known_transform(fixed, moving, fixed_net)
    theta, flow = oracle_network_outputs(in_frame(truth, initial), fixed_net, moving_net, conventions)
    physical = network_to_physical(theta, flow, conventions, fixed_net, moving_net, initial)
    points = landmarks_mm(fixed)
    errors = [np.linalg.norm(np.subtract(physical.transform.TransformPoint(p), truth.TransformPoint(p)))
              for p in points.tolist()]
    print(f"{conventions}: landmark error max {max(errors):.4f} mm, mean {np.mean(errors):.4f} mm")
    assert max(errors) <= 0.5
    # At the network grid's voxels the conversion is exact.
    for index in [(3, 5, 7), (20, 31, 12), (40, 8, 25)]:
        point = fixed_net.TransformIndexToPhysicalPoint(index)
        assert np.allclose(physical.transform.TransformPoint(point), truth.TransformPoint(point), atol=1e-6)
    # The parts compose as documented.
    point = points[0].tolist()
    assert np.allclose(physical.affine.TransformPoint(physical.deformable.TransformPoint(point)),
                       physical.transform.TransformPoint(point))


@pytest.mark.parametrize("conventions", ["corrected", "original"])
def test_resampling_with_transform_equals_network_warp(conventions):
    fixed, moving = fixed_image(), moving_image()
    fixed_net, moving_net, initial = network_grids(fixed, moving)
    theta, flow = oracle_network_outputs(in_frame(known_transform(fixed, moving, fixed_net), initial), fixed_net,
                                         moving_net, conventions)
    physical = network_to_physical(theta, flow, conventions, fixed_net, moving_net)  # in the frame
    # Also away from the fixed grid's border, where "original" samples its intermediate (affine-warped) image.
    mask = interior_mask(moving_net, fixed_net, physical.transform) & interior_mask(fixed_net, fixed_net,
                                                                                     physical.deformable)
    assert mask.mean() > 0.3
    # A linear ramp is reproduced exactly by any number of trilinear interpolations: an exact test of the mapping for
    # both conventions. The real image is exact too with one resampling ("corrected"); "original" resamples twice.
    real = sitk.Cast(moving_net, sitk.sitkFloat64)
    for image, exact in ((ramp_like(moving_net), True), (real, conventions == "corrected")):
        values = torch.from_numpy(sitk.GetArrayFromImage(image))[None, None]
        network = warp_moving(values, theta, flow, conventions)[0, 0].numpy()
        resampled = sitk.GetArrayFromImage(sitk.Resample(image, fixed_net, physical.transform, sitk.sitkLinear))
        diff = np.abs(network - resampled)[mask]
        print(f"{conventions}: |network warp - sitk resample| max {diff.max():.2e}, mean {diff.mean():.2e}")
        if exact:
            assert diff.max() < 1e-9
        else:
            assert np.corrcoef(network[mask], resampled[mask])[0, 1] > 0.98


@pytest.mark.parametrize("conventions", ["corrected", "original"])
def test_zero_outputs_map_network_voxels_to_the_same_network_voxels(conventions):
    fixed, moving = fixed_image(), moving_image()
    fixed_net, moving_net, initial = network_grids(fixed, moving)
    shape = tuple(reversed(fixed_net.GetSize()))
    theta = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)
    physical = network_to_physical(theta, torch.zeros(3, *shape), conventions, fixed_net, moving_net, initial)
    if conventions == "corrected":  # identity in voxels: the whole map is the initial alignment
        for index in [(0, 0, 0), (10, 20, 30), (47, 47, 47)]:
            point = fixed_net.TransformIndexToPhysicalPoint(index)
            assert np.allclose(physical.transform.TransformPoint(point), initial.TransformPoint(point), atol=1e-9)
    # In both conventions the zero-flow part of the field's voxel map lies in the affine: no displacement.
    assert np.abs(sitk.GetArrayViewFromImage(physical.displacement_mm)).max() < 1e-9


# --- match_volumes --------------------------------------------------------------------------------------------------

def axis_aligned_pair(shift_mm=(7.5, -5.0, 12.0)) -> tuple[sitk.Image, sitk.Image]:
    """The same real volume twice at the target spacing, the moving copy translated by ``shift_mm``."""
    array = mni_block((40, 44, 36))
    fixed = make_image(array, (2.5, 2.5, 2.5), (-40.0, -60.0, -30.0))
    moving = make_image(array, (2.5, 2.5, 2.5), np.add(fixed.GetOrigin(), shift_mm))
    return fixed, moving


def test_identity_network_with_centres_of_mass_recovers_a_translation_exactly():
    """Same anatomy, grid moved: the centres of mass move with it, and a network that returns the identity (a new
    one: its last layers start at zero) gives exactly that translation."""
    shift = np.array([7.5, -5.0, 12.0])
    fixed, moving = axis_aligned_pair(tuple(shift))
    result = match_volumes(fixed, moving, zero_head_network(), config=CONFIG)
    assert result.initial_alignment == "centres-of-mass"
    for point in landmarks_mm(fixed, 10):
        assert np.allclose(result.transform.TransformPoint(point.tolist()), point + shift, atol=1e-6)
    assert np.allclose(sitk.GetArrayFromImage(result.warped), sitk.GetArrayFromImage(moving), atol=1e-5)
    displacement = sitk.GetArrayFromImage(result.displacement_mm_lps)
    assert result.displacement_mm_lps.GetPixelID() == sitk.sitkVectorFloat64
    assert displacement.shape == (*reversed(fixed.GetSize()), 3) and np.allclose(displacement, shift, atol=1e-6)
    labels = sitk.Cast(sitk.BinaryThreshold(moving, 0.3, 0.6, 1, 0) + 2 * sitk.BinaryThreshold(moving, 0.6, 2.0, 1, 0),
                       sitk.sitkUInt8)
    propagated = result.propagate_labels(labels)
    assert propagated.GetPixelID() == sitk.sitkUInt8 and propagated.GetSize() == fixed.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(propagated), sitk.GetArrayFromImage(labels))
    metrics = result.metrics
    assert set(metrics) == {"ncc_before", "ncc_after", "nonpositive_jacobian_percent", "displacement_mean_mm",
                            "displacement_max_mm", "seconds"}
    assert metrics["nonpositive_jacobian_percent"] == 0.0
    assert metrics["displacement_mean_mm"] == pytest.approx(np.linalg.norm(shift), abs=1e-6)
    assert metrics["displacement_max_mm"] == pytest.approx(np.linalg.norm(shift), abs=1e-6)
    assert metrics["ncc_after"] == pytest.approx(metrics["ncc_before"], abs=1e-6)
    assert 0 < metrics["ncc_after"] <= 1
    assert result.network_metrics == metrics and result.refine_iterations == 0


def test_identity_network_with_physical_alignment_is_no_registration():
    fixed, moving = axis_aligned_pair((7.5, -5.0, 12.0))
    result = match_volumes(fixed, moving, zero_head_network(),
                           config=dataclasses.replace(CONFIG, initial_alignment="physical"))
    for point in landmarks_mm(fixed, 10):
        assert np.allclose(result.transform.TransformPoint(point.tolist()), point, atol=1e-9)
    assert np.abs(sitk.GetArrayFromImage(result.displacement_mm_lps)).max() < 1e-9


@pytest.mark.parametrize("conventions", ["corrected", "original"])
def test_transform_reproduces_the_networks_own_warp(conventions):
    model = random_head_network(conventions)
    result = match_volumes(fixed_image(), moving_image(), model, config=CONFIG)
    assert result.conventions == conventions
    frame = in_frame(result.transform, result.initial)  # the network images both live in the fixed scan's frame
    mask = interior_mask(result.moving_network, result.fixed_network, frame) & interior_mask(
        result.fixed_network, result.fixed_network, result.deformable)
    resampled = sitk.GetArrayFromImage(sitk.Resample(result.moving_network, result.fixed_network, frame))
    network = sitk.GetArrayFromImage(result.warped_network)
    diff = np.abs(network - resampled)[mask]
    print(f"{conventions}: random network, |network warp - sitk resample| max {diff.max():.2e} on {mask.sum()} voxels")
    if conventions == "corrected":
        assert diff.max() < 1e-4
    else:  # two resamplings in the network
        assert np.corrcoef(network[mask], resampled[mask])[0, 1] > 0.98
    # Exact for both conventions on a linear ramp, with the network's own affine and field for this pair.
    pair = [torch.from_numpy(sitk.GetArrayFromImage(im))[None, None] for im in (result.fixed_network,
                                                                                 result.moving_network)]
    with torch.no_grad():
        _, _, theta, flow = model(*pair)
    ramp = ramp_like(result.moving_network)
    network = warp_moving(torch.from_numpy(sitk.GetArrayFromImage(ramp))[None, None], theta.double(), flow.double(),
                          conventions)[0, 0].numpy()
    resampled = sitk.GetArrayFromImage(sitk.Resample(ramp, result.fixed_network, frame))
    assert np.abs(network - resampled)[mask].max() < 1e-6
    assert result.warped.GetSize() == result.fixed.GetSize()
    assert result.warped.GetDirection() == result.fixed.GetDirection()
    assert 0 <= result.metrics["nonpositive_jacobian_percent"] <= 100


def test_feature_similarity_is_one_at_the_same_point_of_an_identical_pair():
    fixed, moving = axis_aligned_pair((0.0, 0.0, 0.0))
    torch.manual_seed(2)
    result = match_volumes(fixed, moving, GVSL(CHANNELS), config=CONFIG)
    index = (18, 22, 17)
    similarity = result.feature_similarity(fixed.TransformIndexToPhysicalPoint(index))
    assert similarity.GetPixelID() == sitk.sitkFloat32 and similarity.GetSize() == moving.GetSize()
    values = sitk.GetArrayFromImage(similarity)
    assert values[index[::-1]] == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(values), values.shape) == index[::-1]
    assert values.min() >= -1 - 1e-5
    with pytest.raises(ValueError, match="outside"):
        result.feature_similarity((1000.0, 0.0, 0.0))


def test_resampling_onto_the_frame_half_a_voxel_off_keeps_the_detail():
    """Network and refinement images are resampled onto the frame's grid, which for the moving scan lies a fraction
    of a voxel off its own: trilinear interpolation would average neighbours there (a pattern of 8-voxel period loses
    7.6 % of its amplitude half a voxel off), blurring one scan of a pair and not the other."""
    from gvsl.match.frame import on_grid

    def pattern(size: int, offset_voxels: float) -> np.ndarray:
        x = np.arange(size) + offset_voxels
        wave = 0.5 + 0.4 * np.sin(2 * np.pi * x / 8)
        return (wave[:, None, None] * wave[None, :, None] * wave[None, None, :]).astype(np.float32)

    image = sitk.GetImageFromArray(pattern(32, 0.0))
    image.SetSpacing((2.0, 2.0, 2.0))
    grid = sitk.Image([32, 32, 32], sitk.sitkUInt8)
    grid.SetSpacing((2.0, 2.0, 2.0))
    grid.SetOrigin((1.0, 1.0, 1.0))  # half a voxel off along each axis
    inside = (slice(4, -4),) * 3
    error = np.abs(sitk.GetArrayFromImage(on_grid(image, grid)) - pattern(32, 0.5))[inside]
    assert error.max() < 0.01  # trilinear: 0.06


def test_large_volume_is_seen_whole_at_a_coarser_spacing():
    fixed, moving = axis_aligned_pair()
    config = MatchConfig(prepare=PrepareConfig(target_spacing=(2.5, 2.5, 2.5)), max_size_xyz=(32, 32, 32))
    inputs = prepare_network_inputs(fixed, moving, "MR", "MR", config)
    for image in (inputs.fixed, inputs.moving):
        assert image.GetSize() == (32, 32, 32)
        assert image.GetSpacing()[0] > 2.5 and len(set(image.GetSpacing())) == 1
    assert all(0 <= r.start < r.stop <= 32 for r in inputs.fixed_region_dhw)
    with pytest.raises(ValueError, match="multiples of 16"):
        MatchConfig(max_size_xyz=(40, 32, 32))


def test_the_network_never_sees_the_scans_finer_than_they_are():
    """A checkpoint trained at 1 mm on 2.5 mm scans: the network sees them at 2.5 mm (8 voxels in 125 of the 1 mm
    grid's, no detail lost), unless a spacing is chosen (``--spacing``: taken as given)."""
    from gvsl.match import MatchOptions
    from gvsl.match.options import match_config_for

    fixed, moving = axis_aligned_pair()
    trained = {"preprocessing": {"target_spacing": [1.0, 1.0, 1.0]}}
    config = match_config_for(MatchOptions(), trained)
    assert config.prepare.target_spacing == (1.0, 1.0, 1.0) and config.coarsen_to_scans
    assert prepare_network_inputs(fixed, moving, "MR", "MR", config).fixed.GetSpacing() == pytest.approx((2.5,) * 3)
    chosen = match_config_for(MatchOptions(target_spacing=(1.0, 1.0, 1.0)), trained)
    assert not chosen.coarsen_to_scans
    assert prepare_network_inputs(fixed, moving, "MR", "MR", chosen).fixed.GetSpacing() == pytest.approx((1.0,) * 3)


def test_unusable_inputs_give_clear_errors():
    fixed, moving = axis_aligned_pair()
    model = GVSL(CHANNELS)
    with pytest.raises(ValueError, match="moving image is 2D"):
        match_volumes(fixed, moving[:, :, 5], model, config=CONFIG)
    nan = sitk.Image(moving) * float("nan")
    with pytest.raises(ValueError, match="moving image: no finite voxel"):
        match_volumes(fixed, nan, model, config=CONFIG)
    with pytest.raises(ValueError, match="GVSL network"):
        match_volumes(fixed, moving, torch.nn.Linear(2, 2), config=CONFIG)


# --- gvsl match -----------------------------------------------------------------------------------------------------

CLI_OPTIONS = ["--spacing", "2.5", "2.5", "2.5", "--max-size", "64", "64", "64", "--fixed-modality", "MR"]


def write_checkpoint(folder) -> str:
    torch.manual_seed(3)
    return str(save_checkpoint(folder / "model.pt", gvsl_payload(GVSL(CHANNELS), iteration=0)))


def test_cli_writes_outputs_that_itk_tools_reproduce(tmp_path):
    fixed_path, moving_path, labels_path = (str(tmp_path / n) for n in ("fixed.nii.gz", "moving.nrrd", "labels.nrrd"))
    sitk.WriteImage(fixed_image(), fixed_path)
    moving = moving_image()
    sitk.WriteImage(moving, moving_path)
    sitk.WriteImage(sitk.Cast(sitk.BinaryThreshold(moving, 0.4, 2.0, 1, 0), sitk.sitkUInt8), labels_path)
    out = tmp_path / "out"
    rc = main(["match", fixed_path, moving_path, "--checkpoint", write_checkpoint(tmp_path), "--out", str(out),
               "--labels", labels_path, *CLI_OPTIONS])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels_propagated.nii.gz", "metrics.json", "moving_warped.nii.gz",
                                                     "transform.h5", "transform_network.h5"]
    fixed, moving = sitk.ReadImage(fixed_path), sitk.ReadImage(moving_path)
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    warped = sitk.ReadImage(str(out / "moving_warped.nii.gz"))
    assert warped.GetSize() == fixed.GetSize()
    assert np.allclose(sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform)), sitk.GetArrayFromImage(warped),
                       atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conventions"] == "corrected" and "ncc_after" in metrics and "ncc_after" in metrics["network"]
    assert metrics["refine_iterations"] == RefineConfig().iterations > 0
    assert metrics["initial_alignment"] == "centres-of-mass"
    network = sitk.ReadTransform(str(out / "transform_network.h5"))
    assert not np.allclose(network.TransformPoint((0.0, 0.0, 0.0)), transform.TransformPoint((0.0, 0.0, 0.0)))
    labels = sitk.ReadImage(str(out / "labels_propagated.nii.gz"))
    assert labels.GetSize() == fixed.GetSize() and set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1}


def test_cli_preprocesses_as_the_checkpoint_was_trained(tmp_path):
    """Without flags, matching uses the spacing/window/percentiles recorded by ``gvsl pretrain``; flags win."""
    from gvsl.cli import build_parser
    from gvsl.match import MatchOptions, match_files

    def matched(argv: list[str]):
        args = build_parser(["match"]).parse_args(argv)
        return match_files(args.fixed, args.moving, args.checkpoint, MatchOptions.from_arguments(args)).result

    fixed_path, moving_path = str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nrrd")
    sitk.WriteImage(fixed_image(), fixed_path)
    sitk.WriteImage(moving_image(), moving_path)
    torch.manual_seed(3)
    recorded = {"target_spacing": [3.0, 3.0, 3.0], "ct_window": [-500.0, 500.0], "mr_percentiles": [1.0, 99.0]}
    checkpoint = str(save_checkpoint(tmp_path / "trained.pt", gvsl_payload(
        GVSL(CHANNELS), 0, preprocessing=recorded, initial_alignment="physical")))
    common = ["match", fixed_path, moving_path, "--checkpoint", checkpoint, "--out", str(tmp_path / "out"),
              "--fixed-modality", "MR", "--moving-modality", "MR", "--refine", "0"]
    result = matched(common)
    assert result.fixed_network.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
    assert result.initial_alignment == "physical"
    result = matched([*common, "--spacing", "2.5", "2.5", "2.5", "--initial-alignment", "centres-of-mass"])
    assert result.fixed_network.GetSpacing() == pytest.approx((2.5, 2.5, 2.5))
    assert result.initial_alignment == "centres-of-mass"


def test_cli_reads_a_dicom_series_folder(tmp_path):
    image = fixed_image() * 1000.0
    write_dicom_series(image, tmp_path / "series", modality="MR", patient_id="P", study_uid=generate_uid())
    read = read_image(tmp_path / "series")
    assert read.GetSize() == image.GetSize()
    assert np.allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(read.GetDirection(), image.GetDirection(), atol=1e-5)
    assert np.allclose(sitk.GetArrayFromImage(read), np.rint(sitk.GetArrayFromImage(image)))
    with pytest.raises(ValueError, match="0 DICOM series"):
        read_image(tmp_path)


def test_cli_match_runs_without_monai(tmp_path):
    """``gvsl match`` imports no MONAI (seconds of every match call): a whole match, in a fresh interpreter."""
    fixed_path, moving_path = str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nrrd")
    sitk.WriteImage(fixed_image(), fixed_path)
    sitk.WriteImage(moving_image(), moving_path)
    argv = ["match", fixed_path, moving_path, "--checkpoint", write_checkpoint(tmp_path), "--out",
            str(tmp_path / "out"), *CLI_OPTIONS, "--refine", "0"]
    code = f"import sys\nfrom gvsl.cli import main\nassert main({argv!r}) == 0\nprint('monai' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "out" / "transform.h5").is_file()


def test_cli_bad_inputs_fail_clearly_and_write_nothing(tmp_path, capsys):
    good = str(tmp_path / "good.nii.gz")
    sitk.WriteImage(fixed_image(), good)
    flat = str(tmp_path / "flat.nii.gz")
    sitk.WriteImage(fixed_image()[:, :, 3], flat)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    not_gvsl = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, not_gvsl)
    fine_tuned = tmp_path / "best.pt"
    torch.save({"format": SEGMENTATION_FORMAT, "model": {}, "config": {"init": "run/checkpoints/iter_000500.pt"}},
               fine_tuned)
    checkpoint = write_checkpoint(tmp_path)
    other_grid = str(tmp_path / "labels_on_fixed.nrrd")
    sitk.WriteImage(sitk.Cast(fixed_image() > 0.4, sitk.sitkUInt8), other_grid)
    out = tmp_path / "out"
    cases = [
        ([good, str(tmp_path / "missing.nii.gz"), checkpoint], [], "does not exist"),
        ([good, str(junk), checkpoint], [], "cannot read"),
        ([good, flat, checkpoint], [], "2D"),
        ([good, good, str(not_gvsl)], [], "not a GVSL state dict"),
        ([good, good, good], [], f"{good} is not a PyTorch checkpoint"),  # an image given as the checkpoint
        ([good, good, str(junk)], [], "is not a PyTorch checkpoint"),
        ([good, good, str(fine_tuned)], [], "a fine-tuned segmentation model (gvsl finetune), not a pre-training "
                                            "checkpoint: use it with gvsl segment; here use the pre-training "
                                            "checkpoint it was fine-tuned from (run/checkpoints/iter_000500.pt)"),
        ([good, flat.replace("flat", "moving"), checkpoint], ["--labels", other_grid],
         "is not on the moving scan's grid (size"),
    ]
    sitk.WriteImage(moving_image(), flat.replace("flat", "moving"))
    for (fixed, moving, ckpt), extra, message in cases:
        assert main(["match", fixed, moving, "--checkpoint", ckpt, "--out", str(out), *CLI_OPTIONS, *extra]) == 1
        assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_matching_refuses_the_fine_tuned_models_payload():
    from gvsl.checkpoints import describe
    from gvsl.segment.model import SegmentationInfo, SegmentationNet, segmentation_payload

    model = SegmentationNet(2, CHANNELS)
    info = SegmentationInfo(CHANNELS, 2, {"labels": [{"value": 1, "name": "a", "color": [1, 0, 0]}]}, {},
                            (16, 16, 16), "finetune", 7)
    payload = segmentation_payload(model, info, config={"init": "pre.pt"})
    assert (payload["format"], payload["channels"], payload["iteration"]) == (SEGMENTATION_FORMAT, list(CHANNELS), 7)
    with pytest.raises(ValueError, match=r"fine-tuned segmentation model .*\(pre.pt\)"):
        describe(payload)


# --- refinement on the pair ------------------------------------------------------------------------------------------

def warped_real_head(spacing: float = 3.0) -> tuple[sitk.Image, sitk.Image, sitk.Transform, np.ndarray]:
    """(fixed, moving, truth, brain points of the fixed head): the moving head is the MNI152 T1 template, the fixed
    head the template seen through a known transform (rotation, anisotropic scaling, shift, smooth B-spline), so
    fixed point p corresponds to moving point truth(p)."""
    from gvsl.sample_data import load_mni

    moving = load_mni(spacing=spacing)["t1"]
    centre = np.asarray(moving.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in moving.GetSize()]))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre.tolist())
    affine.SetMatrix((rotation((2, -1, 1), 7) @ np.diag([1.06, 0.95, 1.03])).ravel().tolist())
    affine.SetTranslation((4.0, -6.0, 3.0))
    bspline = sitk.BSplineTransformInitializer(sitk.ConstantPad(moving, [10] * 3, [10] * 3), [5, 5, 5])
    bspline.SetParameters(np.random.default_rng(4).uniform(-4, 4, len(bspline.GetParameters())).tolist())
    truth = sitk.CompositeTransform([affine, bspline])
    fixed = sitk.Resample(moving, moving, truth, sitk.sitkLinear, 0.0)
    brain = np.argwhere(sitk.GetArrayViewFromImage(fixed) > 60)[::97, ::-1]  # (x, y, z) voxels of brain tissue
    points = np.array([fixed.TransformIndexToPhysicalPoint([int(i) for i in v]) for v in brain])
    return fixed, moving, truth, points


def point_errors_mm(transform: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(np.subtract(transform.TransformPoint(p), truth.TransformPoint(p)))
                     for p in points.tolist()])


def test_refinement_recovers_a_known_warp_of_a_real_head():
    """From an untrained network (the identity), refinement alone finds a known affine + smooth warp of a real
    brain to well under a voxel (3 mm), from errors of about 9 mm."""
    fixed, moving, truth, points = warped_real_head()
    config = MatchConfig(prepare=PrepareConfig(target_spacing=(3.0, 3.0, 3.0)), initial_alignment="physical")
    result = match_volumes(fixed, moving, zero_head_network(), config=config)
    before = point_errors_mm(sitk.Transform(3, sitk.sitkIdentity), truth, points)
    network = point_errors_mm(result.network_transform, truth, points)
    refined = point_errors_mm(result.transform, truth, points)
    print(f"mean error: none {before.mean():.2f} mm, network {network.mean():.2f} mm, refined {refined.mean():.2f} mm "
          f"(90th percentile {np.percentile(refined, 90):.2f}) in {result.metrics['seconds']:.1f} s")
    assert before.mean() > 6 and network.mean() == pytest.approx(before.mean(), abs=1e-6)
    assert refined.mean() < 1.0 and np.percentile(refined, 90) < 2.0
    assert result.metrics["ncc_after"] > result.network_metrics["ncc_after"] + 0.2
    assert result.metrics["nonpositive_jacobian_percent"] < 0.1
    # The network's warped image on the frame grid is what the written transform does there.
    in_frame = sitk.Resample(result.moving_network, result.fixed_network, result.transform)  # physical alignment
    assert np.allclose(sitk.GetArrayFromImage(in_frame), sitk.GetArrayFromImage(result.warped_network), atol=1e-4)


@pytest.mark.parametrize("architecture", ["paper", "correlation"])
def test_a_self_pair_returns_the_identity(architecture):
    """A scan matched to itself stays where it is: exactly for a new network of either architecture, and within
    0.5 mm everywhere in the head after refinement (in the air around it nothing holds points in place, and a few
    tenths of a millimetre of drift there are allowed)."""
    fixed = load_head_3mm()
    torch.manual_seed(5)
    model = GVSL(CHANNELS, architecture=architecture)
    result = match_volumes(fixed, fixed, model, config=MatchConfig(prepare=PrepareConfig(target_spacing=(3.0,) * 3)))
    head = sitk.GetArrayViewFromImage(fixed) > 0.1 * float(np.max(sitk.GetArrayViewFromImage(fixed)))
    network = sitk.TransformToDisplacementField(result.network_transform, sitk.sitkVectorFloat64, fixed.GetSize(),
                                                fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    assert np.abs(sitk.GetArrayFromImage(network)).max() < 1e-4
    refined = np.linalg.norm(sitk.GetArrayFromImage(result.displacement_mm_lps), axis=-1)
    print(f"{architecture}: refined self-pair moves head voxels by at most {refined[head].max():.3f} mm "
          f"(mean {refined[head].mean():.3f}), any voxel by at most {refined.max():.3f} mm")
    assert refined[head].max() < 0.5 and refined.mean() < 0.5


def load_head_3mm() -> sitk.Image:
    from gvsl.sample_data import load_mni

    return load_mni(spacing=3.0)["t1"]


FOLDING_SLAB = """
import numpy as np, SimpleITK as sitk
from gvsl.match.metrics import nonpositive_jacobian_percent
x = np.arange(40.0)
u = np.zeros((40, 40, 40, 3))
u[..., 0] = np.where((x >= 10) & (x <= 20), -2 * (x - 10), np.where(x > 20, -20.0, 0.0))[None, None, :]
print(nonpositive_jacobian_percent(sitk.GetImageFromArray(u, isVector=True), sitk.AffineTransform(3),
                                   (slice(None),) * 3))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_folding_measure_reads_memory_it_owns():
    """The folding measure is exact on a field that folds on a slab (x from 10 to 20: 11 of 40 columns), also when
    every freed buffer goes straight back to the system (glibc, MALLOC_MMAP_THRESHOLD_): it once read the
    Jacobian image through a view after freeing it, which crashed ``gvsl match`` with signal 11 now and then."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", FOLDING_SLAB], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) == pytest.approx(100 * 11 / 40)
