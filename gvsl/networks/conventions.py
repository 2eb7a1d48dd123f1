"""Where the network samples: network voxel index -> sampled voxel index.

This is the one place that states, for each network convention, how the
Z-matching head's outputs (an affine matrix and a displacement field) map a
voxel of the output grid to the voxel of the input that it samples. All voxel
indices are in array-axis order (d, h, w) = (k, j, i), integers at voxel
centres, like SimpleITK's and Slicer's arrays.

``"corrected"`` (default for new training)
    affine: ``q = R (p - c) + c + t`` with ``c = (size - 1) / 2``; R's rows and
    columns and t's entries follow the array axes (d, h, w); t is in voxels.
    field:  ``q = p + flow(p)``, flow in voxels, channels (d, h, w).

``"original"`` (the published code; kept so its checkpoints behave as trained)
    affine: R and t act on (x, y, z) = (w, h, d) in ``affine_grid``'s
    normalised coordinates (``align_corners=False``), after the translation
    of row r was divided by the size of array axis r (row 0 by D, ...). In
    voxels: ``q_xyz = s/2 * (R (2 (p_xyz + 1/2) / s - 1) + t / s_dhw) + s/2 - 1/2``
    with ``s = (W, H, D)`` per row.
    field:  ``q = (p + flow(p)) * size / (size - 1) - 1/2`` per axis (the
    field is normalised with ``size - 1`` but sampled with
    ``align_corners=False``).

In both conventions the image produced at p is ``input(q)``: a translation
of t voxels shows the input shifted by -t (sampling convention, as in
VoxelMorph). A zero field and an identity affine give back the input exactly
only under ``"corrected"``.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

Conventions = Literal["corrected", "original"]
CONVENTIONS: tuple[str, ...] = ("corrected", "original")


def check_conventions(conventions: str) -> None:
    if conventions not in CONVENTIONS:
        raise ValueError(f"conventions must be one of {CONVENTIONS}, got {conventions!r}")


def affine_voxel_matrix(theta: torch.Tensor, shape_dhw: Sequence[int], conventions: Conventions) -> torch.Tensor:
    """Homogeneous matrix mapping a network voxel (d, h, w, 1) to the sampled voxel.

    Args:
        theta: (N, 3, 4) matrix from the affine head ([R | t]).
        shape_dhw: the grid's size (D, H, W).
    Returns:
        (N, 4, 4) float tensor, same dtype and device as ``theta``.
    """
    check_conventions(conventions)
    n = theta.shape[0]
    size_dhw = torch.tensor([float(s) for s in shape_dhw], dtype=theta.dtype, device=theta.device)
    rot, trans = theta[:, :, :3], theta[:, :, 3]
    if conventions == "corrected":
        centre = (size_dhw - 1) / 2
        lin = rot
        off = centre - rot @ centre + trans
    else:
        # Work in (x, y, z) = (w, h, d), then permute rows and columns to (d, h, w).
        size_xyz = size_dhw.flip(0)
        half = size_xyz / 2
        # p_n = (2 p + 1) / s - 1 ; q = half * (R p_n + t / size_dhw) + half - 1/2
        lin_xyz = half[:, None] * rot * (2 / size_xyz)[None, :]
        off_xyz = half * (rot @ (1 / size_xyz - 1) + trans / size_dhw) + half - 0.5
        perm = [2, 1, 0]
        lin = lin_xyz[:, perm][:, :, perm]
        off = off_xyz[:, perm]
    out = torch.zeros(n, 4, 4, dtype=theta.dtype, device=theta.device)
    out[:, :3, :3] = lin
    out[:, :3, 3] = off
    out[:, 3, 3] = 1
    return out


def corrected_theta(matrix: torch.Tensor, shape_dhw: Sequence[int]) -> torch.Tensor:
    """The (N, 3, 4) [R | t] of the "corrected" convention whose ``affine_voxel_matrix`` is ``matrix`` (N, 4, 4)."""
    centre = (torch.tensor([float(s) for s in shape_dhw], dtype=matrix.dtype, device=matrix.device) - 1) / 2
    linear = matrix[:, :3, :3]
    return torch.cat([linear, (matrix[:, :3, 3] - centre + linear @ centre).unsqueeze(-1)], dim=-1)


def flow_sampled_voxels(flow: torch.Tensor, conventions: Conventions) -> torch.Tensor:
    """Voxel each output voxel samples under a displacement field.

    Args:
        flow: (N, 3, D, H, W) displacement in voxels, channels (d, h, w).
    Returns:
        (N, 3, D, H, W) sampled voxel indices, channels (d, h, w).
    """
    check_conventions(conventions)
    shape = flow.shape[2:]
    q = identity_grid(shape, flow) + flow
    if conventions == "original":
        size = torch.tensor([float(s) for s in shape], dtype=flow.dtype, device=flow.device).view(1, 3, 1, 1, 1)
        q = q * size / (size - 1) - 0.5
    return q


def identity_grid(shape_dhw: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(1, 3, D, H, W) voxel indices of a grid, channels (d, h, w)."""
    axes = [torch.arange(s, dtype=like.dtype, device=like.device) for s in shape_dhw]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def apply_voxel_matrix(matrix: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """Apply (N, 4, 4) homogeneous matrices to (N or 1, 3, ...) voxel coordinates."""
    lin, off = matrix[:, :3, :3], matrix[:, :3, 3]
    flat = voxels.flatten(2)
    out = torch.einsum("nij,njk->nik", lin, flat.expand(matrix.shape[0], -1, -1)) + off[:, :, None]
    return out.view(matrix.shape[0], 3, *voxels.shape[2:])
