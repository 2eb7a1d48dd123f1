"""Resampling a volume at voxel coordinates (a spatial transformer layer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gvsl.networks.conventions import affine_voxel_matrix, apply_voxel_matrix, flow_sampled_voxels, identity_grid


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in its own dtype where that is wider (geometry is never computed in half precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def grid_sample_threaded(volume: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                         padding_mode: str = "zeros") -> torch.Tensor:
    """``F.grid_sample(volume, grid, mode, padding_mode, align_corners=True)`` for a (N, C, D, H, W) ``volume`` and
    a (N, d, h, w, 3) ``grid``, on a CPU with every thread.

    PyTorch's CPU kernels for 3D grids run the batch entries in parallel and each entry's points on one thread, so
    one volume is sampled on one core. Here the points of a single volume are split into as many batch entries as
    there are threads (views, the volume expanded without a copy), which on 2 cores halves the time of sampling a
    2 mm head and of the gradient with respect to the points."""
    points = grid.shape[1] * grid.shape[2] * grid.shape[3]
    chunks = 1
    if volume.device.type == "cpu" and volume.shape[0] == grid.shape[0] == 1:
        chunks = max(k for k in range(1, torch.get_num_threads() + 1) if points % k == 0)
    if chunks == 1:
        return F.grid_sample(volume, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    split = grid.reshape(chunks, points // chunks, 1, 1, 3)
    out = F.grid_sample(volume.expand(chunks, -1, -1, -1, -1), split, mode=mode, padding_mode=padding_mode,
                        align_corners=True)
    return out.transpose(0, 1).reshape(1, volume.shape[1], *grid.shape[1:4])


def sample_voxels(volume: torch.Tensor, voxels_dhw: torch.Tensor, mode: str = "bilinear",
                  padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``volume`` at voxel coordinates.

    Args:
        volume: (N, C, D, H, W) input.
        voxels_dhw: (N, 3, D', H', W') coordinates in input voxels, channels
            (d, h, w); index 0 is the first voxel's centre.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
    Returns:
        (N, C, D', H', W'); samples outside the input follow ``padding_mode``.
    """
    size = torch.tensor(volume.shape[2:], dtype=voxels_dhw.dtype, device=voxels_dhw.device).view(1, 3, 1, 1, 1)
    # grid_sample wants (x, y, z) = (w, h, d) in [-1, 1] with -1/+1 at the first/last voxel centre.
    norm = voxels_dhw * (2 / (size - 1).clamp(min=1)) - 1
    grid = norm.permute(0, 2, 3, 4, 1).flip(-1)
    if grid.dtype != volume.dtype:
        grid = grid.to(volume.dtype)
    return grid_sample_threaded(volume, grid, mode, padding_mode)


def warp_affine(volume: torch.Tensor, theta: torch.Tensor, conventions: str) -> torch.Tensor:
    """Resample (N, C, D, H, W) ``volume`` under the (N, 3, 4) affine ``theta``."""
    matrix = affine_voxel_matrix(at_least_float32(theta), volume.shape[2:], conventions)
    grid = identity_grid(volume.shape[2:], matrix)
    return sample_voxels(volume, apply_voxel_matrix(matrix, grid))


def warp_moving(volume: torch.Tensor, theta: torch.Tensor, flow: torch.Tensor, conventions: str) -> torch.Tensor:
    """Warp ``volume`` by the affine and then the displacement field, as the network does.

    Under ``"corrected"`` the two are composed into one resampling,
    ``volume(A(p + flow(p)))``, which is the same mapping with a single
    interpolation. ``"original"`` resamples twice, as the published code did.
    """
    if conventions == "original":
        after_affine = warp_affine(volume, theta, conventions)
        return sample_voxels(after_affine, flow_sampled_voxels(at_least_float32(flow), conventions))
    matrix = affine_voxel_matrix(at_least_float32(theta), volume.shape[2:], conventions)
    sampled = apply_voxel_matrix(matrix, flow_sampled_voxels(at_least_float32(flow), conventions))
    return sample_voxels(volume, sampled)
