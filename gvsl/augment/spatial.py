"""Random spatial transforms (affine + elastic) composed into one voxel map, so each volume is resampled once."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from gvsl.augment.config import AugmentationConfig
from gvsl.augment.draw import uniform
from gvsl.networks.affine import compose_affine_matrix
from gvsl.networks.conventions import affine_voxel_matrix, apply_voxel_matrix, identity_grid
from gvsl.networks.warp import sample_voxels

GAUSSIAN_TRUNCATE = 4.0  # kernel radius in standard deviations, as scipy.ndimage.gaussian_filter


@dataclass
class SpatialTransform:
    """Output voxel p -> sampled input voxel ``M (p + u(p))``, per sample.

    Attributes:
        matrix: (N, 4, 4) homogeneous voxel matrix ``M``, about the volume
            centre, array-axis order (d, h, w); for a pure translation t,
            ``output[p] = input[p + t]``.
        displacement: elastic displacement ``u`` in voxels, channels (d, h, w),
            at the nodes of a coarse grid, (N, 3, n_d, n_h, n_w), node i of an
            axis of size s at voxel ``i (s - 1) / (n - 1)``; or ``None``.
        shape: (D, H, W) of the output grid.
    """

    matrix: torch.Tensor
    displacement: torch.Tensor | None
    shape: tuple[int, int, int]

    def voxels(self) -> torch.Tensor:
        """(N, 3, D, H, W) sampled voxel coordinates, channels (d, h, w).

        With a displacement, the whole map is computed at its nodes and
        trilinearly upsampled: exact for the affine part (trilinear
        interpolation reproduces linear functions) and the same
        interpolation as upsampling the displacement alone.
        """
        if self.displacement is None:
            return apply_voxel_matrix(self.matrix, identity_grid(self.shape, self.matrix))
        nodes = node_grid(self.shape, self.displacement.shape[2:], self.displacement)
        coarse = apply_voxel_matrix(self.matrix, nodes + self.displacement)
        return F.interpolate(coarse, size=self.shape, mode="trilinear", align_corners=True)

    def apply(self, *volumes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Resample (N, C_i, D, H, W) volumes once each (trilinear, zeros outside); returns them in order."""
        # One channels-last call for all volumes: torch's 3D CPU grid sampler reads the channels of a voxel
        # together, so this is ~25% faster than one call per volume and ~4x faster than a channels-first stack.
        stacked = torch.cat(volumes, dim=1).contiguous(memory_format=torch.channels_last_3d)
        sampled = sample_voxels(stacked, self.voxels())
        return tuple(v.contiguous() for v in sampled.split([v.shape[1] for v in volumes], dim=1))


def node_grid(shape_dhw: Sequence[int], nodes_dhw: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(1, 3, n_d, n_h, n_w) voxel positions of a coarse grid whose nodes span (D, H, W) end to end."""
    axes = [torch.linspace(0, s - 1, n, dtype=like.dtype, device=like.device) for s, n in zip(shape_dhw, nodes_dhw)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def affine_voxel_map(rot: torch.Tensor, scale: torch.Tensor, trans: torch.Tensor, shear: torch.Tensor,
                     shape_dhw: Sequence[int]) -> torch.Tensor:
    """(N, 4, 4) voxel matrix ``q = A (p - c) + c + t`` with ``c`` the volume centre.

    Args:
        rot: (N, 3) rotation angles (rad) about the d, h and w axes.
        scale: (N, 3) scale factors along (d, h, w).
        trans: (N, 3) translation in voxels along (d, h, w).
        shear: (N, 6) shear angles (rad), see :func:`gvsl.networks.affine.compose_affine_matrix`.
        shape_dhw: (D, H, W) of the grid.
    """
    return affine_voxel_matrix(compose_affine_matrix(rot, scale, trans, shear), shape_dhw, "corrected")


def gaussian_smoothing_matrices(sigma: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """Gaussian smoothing along one axis as matrices, "valid" mode.

    Args:
        sigma: (N,) standard deviations, in samples.
        size: output length; the input is ``size + 2 radius`` long.
        radius: kernel half-width, in samples.
    Returns:
        (N, size, size + 2 radius) matrices whose row i holds the normalised
        discrete Gaussian centred on input sample ``i + radius``.
    """
    k = torch.arange(size + 2 * radius, dtype=sigma.dtype, device=sigma.device)[None, :] - radius
    k = k - torch.arange(size, dtype=sigma.dtype, device=sigma.device)[:, None]
    weights = torch.exp(-0.5 * (k / sigma[:, None, None]) ** 2) * (k.abs() <= radius)
    return weights / weights.sum(dim=2, keepdim=True)


def elastic_displacement(shape_dhw: Sequence[int], alpha: torch.Tensor, sigma: torch.Tensor,
                         generator: torch.Generator | None, grid_spacing: int = 4,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Random elastic displacement ``alpha * (G_sigma * noise)``, noise U[-1, 1] per voxel and axis, at coarse nodes.

    The full-resolution definition convolves per-voxel noise with a Gaussian of
    sigma (10-13 voxels: ~100 taps per axis). Here the noise lives on a grid
    about ``grid_spacing`` times coarser, whose nodes span the volume end to
    end (spacing ``(size - 1) / (n - 1)`` voxels per axis); it is scaled by
    ``(spacing_d spacing_h spacing_w) ** -0.5``, the std of the mean of the
    noise of the voxels a node stands for, smoothed with sigma / spacing
    nodes, and trilinearly upsampled in :meth:`SpatialTransform.voxels`. With
    sigma at least ~2.5 nodes, the field's std and correlation length match
    the full-resolution definition within a few percent (the tests check
    spacing 4). The noise extends past the volume by the kernel radius, so
    there are no boundary effects.

    Args:
        shape_dhw: (D, H, W) grid size.
        alpha: (N,) amplitude; sigma: (N,) Gaussian standard deviation, in voxels.
        grid_spacing: coarsening factor of the noise grid.
    Returns:
        (N, 3, n_d, n_h, n_w) displacement in voxels, channels (d, h, w), at the
        nodes of :func:`node_grid` (``n = ceil((s - 1) / grid_spacing) + 1``).
    """
    n_batch = alpha.shape[0]
    nodes = [max(2, math.ceil((s - 1) / grid_spacing) + 1) for s in shape_dhw]
    spacing = torch.tensor([max(s - 1, 1) / (n - 1) for s, n in zip(shape_dhw, nodes)])
    sigma_coarse = sigma.cpu()[:, None] / spacing[None, :]  # (N, 3 axes)
    radii = [math.ceil(GAUSSIAN_TRUNCATE * float(sigma_coarse[:, a].max())) for a in range(3)]
    noise_shape = (n_batch, 3, *(n + 2 * r for n, r in zip(nodes, radii)))
    field = uniform(noise_shape, -1.0, 1.0, generator, device) * float(spacing.prod()) ** -0.5
    # Separable smoothing as batched matrix products (much faster than a depthwise conv3d on CPU).
    for axis, equation in enumerate(("nid,ncdhw->ncihw", "nih,ncdhw->ncdiw", "niw,ncdhw->ncdhi")):
        matrices = gaussian_smoothing_matrices(sigma_coarse[:, axis].to(field.device), nodes[axis], radii[axis])
        field = torch.einsum(equation, matrices, field)
    return field * alpha.to(field.device, field.dtype).view(-1, 1, 1, 1, 1)


def random_spatial_transform(shape_dhw: Sequence[int], batch: int, generator: torch.Generator | None,
                             config: AugmentationConfig | None = None,
                             device: torch.device | str | None = None) -> SpatialTransform:
    """Draw one affine + elastic transform per sample (ranges in ``config``).

    Args:
        shape_dhw: (D, H, W) of the volumes it will resample.
        batch: N, the number of independent transforms.
        generator: source of all random numbers (any device); ``None`` uses torch's default generator.
        device: where the matrices and displacement live (the volumes' device).
    Returns:
        A :class:`SpatialTransform`; ``.apply(a, a_corrupted, b)`` resamples the volumes,
        ``.voxels()`` gives the (N, 3, D, H, W) sampled voxel coordinates.
    """
    config = config or AugmentationConfig()
    shape = tuple(int(s) for s in shape_dhw)
    size = torch.tensor(shape, dtype=torch.float32, device=device)
    rot = uniform((batch, 3), -config.rotation_max_rad, config.rotation_max_rad, generator, device)
    scale = uniform((batch, 3), *config.scale_range, generator, device)
    trans = uniform((batch, 3), -config.translation_fraction, config.translation_fraction, generator, device) * size
    shear = uniform((batch, 6), -config.shear_max_rad, config.shear_max_rad, generator, device)
    matrix = affine_voxel_map(rot, scale, trans, shear, shape)
    displacement = None
    if config.elastic_alpha[1] > 0:
        alpha = uniform((batch,), *config.elastic_alpha, generator, device)
        sigma = uniform((batch,), *config.elastic_sigma, generator, device)
        displacement = elastic_displacement(shape, alpha, sigma, generator, config.elastic_grid_spacing, device)
    return SpatialTransform(matrix, displacement, shape)
