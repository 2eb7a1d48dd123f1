"""The refinement's parts: its similarity equals the training loss, its regulariser equals the voxel-wise one, its
stopping rule, its Adam, its grid sampling and its map interpolated from the control nodes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gvsl.losses import box_sum, local_ncc_loss, smoothness_loss, squared_ncc
from gvsl.match.grid import RegularGrid, interpolation_matrix
from gvsl.match.refine import Adam, FrameMap, PlateauSchedule, RefineConfig, sampling_coordinates
from gvsl.match.regularisers import InterpolatedDiffusion
from gvsl.match.similarity import FixedImageNCC
from gvsl.networks.warp import grid_sample_threaded


def test_fixed_image_ncc_is_the_training_loss_with_its_gradient():
    torch.manual_seed(0)
    fixed = torch.rand(1, 1, 12, 14, 10, dtype=torch.float64)
    warped = torch.rand(1, 1, 12, 14, 10, dtype=torch.float64, requires_grad=True)
    for window in (3, 5):
        expected = local_ncc_loss(warped, fixed, window)
        (expected_grad,) = torch.autograd.grad(expected, warped)
        value = FixedImageNCC(fixed, window).loss(warped)
        (grad,) = torch.autograd.grad(value, warped)
        assert value.item() == pytest.approx(expected.item(), abs=1e-12)
        assert torch.allclose(grad, expected_grad, atol=1e-15)


def test_weighted_fixed_image_ncc_leaves_out_the_weighted_out_voxels_with_its_gradient():
    """Weights scale each voxel's squared NCC in the mean (still over all voxels), as autograd sees it; a voxel
    weighted out no longer pulls on the warped image beyond its box."""
    torch.manual_seed(1)
    fixed = torch.rand(1, 1, 12, 14, 10, dtype=torch.float64)
    warped = torch.rand(1, 1, 12, 14, 10, dtype=torch.float64, requires_grad=True)
    weights = torch.zeros(12, 14, 10, dtype=torch.float64)
    weights[:, :, :5] = 1.0
    sums = box_sum(torch.cat([warped, fixed, warped**2, fixed**2, warped * fixed], dim=1), 3)
    s_i, s_j, s_ii, s_jj, s_ij = sums.unbind(1)
    expected = 1 - (weights * squared_ncc(s_i, s_ii, s_ij, s_j, s_jj - s_j * s_j / 27, 27.0)).mean()
    (expected_grad,) = torch.autograd.grad(expected, warped)
    value = FixedImageNCC(fixed, 3).loss(warped, weights)
    (grad,) = torch.autograd.grad(value, warped)
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.allclose(grad, expected_grad, atol=1e-15)
    assert grad[..., 6:].abs().max() == 0 and grad[..., :6].abs().min() > 0  # a box of 3 reaches one voxel on


def test_interpolated_diffusion_is_the_voxelwise_diffusion_of_the_interpolated_field():
    nodes_grid = RegularGrid((5, 6, 4), np.zeros(3), 4.0)
    level = RegularGrid((13, 17, 10), np.array([0.5, 0.3, 0.2]), 1.1)  # inside the nodes' box
    weights = tuple(interpolation_matrix(level.positions_mm(axis), nodes_grid, axis).double() for axis in (2, 1, 0))
    diffusion = InterpolatedDiffusion(weights)

    def interpolate(nodes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("cijk,di,hj,wk->cdhw", nodes, *weights).unsqueeze(0)

    torch.manual_seed(3)
    nodes = torch.randn(3, 5, 6, 4, dtype=torch.float64, requires_grad=True)
    value, expected = diffusion.diffusion(nodes), smoothness_loss(interpolate(nodes))
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    (grad,), (expected_grad,) = torch.autograd.grad(value, nodes), torch.autograd.grad(expected, nodes)
    assert torch.allclose(grad, expected_grad, atol=1e-12)
    constant = torch.ones(3, 5, 6, 4, dtype=torch.float64)
    assert diffusion.diffusion(constant).item() == pytest.approx(0.0, abs=1e-12)


def test_plateau_schedule_stops_soon_at_an_optimum_and_runs_while_the_loss_falls():
    config = RefineConfig(iterations=500, patience=5, tolerance=1e-3, halvings=2)
    flat = PlateauSchedule(config)
    factors = []
    while not flat.done:
        factors.append(flat.factor)
        flat.step(1.0)
    assert flat.steps == 1 + 3 * 5  # the first step sets the best; then three runs of 5 without progress
    assert factors[0] == 1.0 and factors[-1] == 0.25
    falling = PlateauSchedule(config)
    while not falling.done:
        falling.step(1.0 - 0.01 * falling.steps)
    assert falling.steps == config.iterations


def test_adam_is_torchs_adam():
    mine = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    theirs = torch.nn.Parameter(mine.detach().clone())
    ours, reference = Adam([mine], 0.1), torch.optim.Adam([theirs], lr=0.1)
    for _ in range(7):
        for parameter, optimizer in ((mine, ours), (theirs, reference)):
            optimizer.zero_grad()
            (parameter**3).sum().backward()
            optimizer.step()
    assert torch.equal(mine, theirs)


def test_grid_sampling_is_sample_voxels_at_the_points_voxels():
    from gvsl.networks import sample_voxels

    torch.manual_seed(2)
    grid = RegularGrid((6, 7, 8), np.array([-10.0, 4.0, 2.5]), 2.5)
    volume = torch.rand(1, 2, 6, 7, 8, dtype=torch.float64)
    points = torch.rand(3, 4, 5, 3, dtype=torch.float64) * 25 - 12  # (x, y, z) last; some outside the grid
    linear = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, dtype=torch.float64)
    offset_mm = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)
    identity = (torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), points)
    for matrix, offset, moved in (identity, (linear, offset_mm, points @ linear.T + offset_mm)):
        voxels_dhw = ((moved - torch.from_numpy(grid.origin_xyz)) / 2.5).flip(-1).permute(3, 0, 1, 2)[None]
        expected = sample_voxels(volume, voxels_dhw)
        scale, shift = grid.to_sampling(points)
        coordinates = ((points @ matrix.T + offset) * scale + shift)[None]
        assert torch.allclose(grid.sample_at(volume, coordinates), expected, atol=1e-12)
    last_centre = grid.origin_xyz + 2.5 * (np.asarray(grid.shape_dhw[::-1]) - 1)
    low, high = grid.sampling_box(grid.origin_xyz, last_centre, points)
    assert torch.allclose(low, -torch.ones(3, dtype=torch.float64)) and torch.allclose(high, torch.ones(3).double())


@pytest.mark.parametrize(("threads", "mode"), [(2, "bilinear"), (3, "bilinear"), (2, "nearest")])
def test_threaded_grid_sample_is_grid_sample_with_its_gradient(threads, mode):
    torch.manual_seed(3)
    volume = torch.rand(1, 2, 9, 8, 7, dtype=torch.float64)
    grid = (torch.rand(1, 5, 6, 7, 3, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)  # 210 points
    weights = torch.rand(1, 2, 5, 6, 7, dtype=torch.float64)
    expected = F.grid_sample(volume, grid, mode=mode, padding_mode="zeros", align_corners=True)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), grid)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sampled = grid_sample_threaded(volume, grid, mode)
        (grad,) = torch.autograd.grad((sampled * weights).sum(), grid)
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(sampled, expected, atol=1e-14)
    assert torch.allclose(grad, expected_grad, atol=1e-12)


def test_the_map_interpolated_from_the_nodes_is_the_affine_of_the_points_plus_displacement_with_its_gradient():
    torch.manual_seed(4)
    control = RegularGrid((5, 6, 7), np.array([-30.0, -25.0, -20.0]), 8.0)
    frame_map = FrameMap(np.eye(4), control, np.array([-6.0, -5.0, -4.0]), 20.0)
    with torch.no_grad():
        frame_map.linear.add_(0.1 * torch.randn(3, 3))
        frame_map.translation.add_(0.1 * torch.randn(3))
        frame_map.delta.normal_(0, 0.05)
    level = RegularGrid((14, 18, 21), np.array([-29.0, -24.5, -19.0]), 2.25)  # inside the nodes, not aligned
    interpolation = frame_map.interpolation(level)
    weights = torch.rand(1, 14, 18, 21, 3)
    nodes = frame_map.control_displacement()
    mine = sampling_coordinates(frame_map, nodes, level, interpolation)
    (mine * weights).sum().backward()
    mine_grads = [p.grad.clone() for p in frame_map.parameters()]
    frame_map.zero_grad()
    linear, offset = frame_map.affine()
    scale, shift = level.to_sampling(nodes)
    displacement = frame_map.interpolate(frame_map.control_displacement(), interpolation)
    moved = (level.points_xyz() + displacement) @ linear.T + offset
    expected = (moved * scale + shift)[None]
    (expected * weights).sum().backward()
    assert torch.allclose(mine, expected, atol=1e-5)
    for mine_grad, parameter in zip(mine_grads, frame_map.parameters()):
        assert torch.allclose(mine_grad, parameter.grad, rtol=1e-4, atol=1e-3)
    beyond = RegularGrid((14, 18, 21), np.array([-29.0, -24.5, -19.0]), 2.5)  # its last x centre: 21 mm > 18
    with pytest.raises(ValueError, match="beyond the control grid"):
        frame_map.interpolation(beyond)
