"""From the network's affine and field (network voxels) to SimpleITK transforms (LPS millimetres).

The network samples the moving network image at ``q = M · g(p)`` for each fixed network voxel p (array order d, h, w),
M being the affine head's voxel matrix and g the field's voxel map (both stated in ``gvsl.networks.conventions``,
called here, never restated). g is affine in p and in the flow, so ``g(p) = L(p + v(p))`` with L = g at zero flow
(the identity under "corrected", a slight scaling under "original") and v a displacement in voxels that is zero where
the flow is zero. With G_f, G_m the grids' index -> LPS maps, the fixed -> moving map is exactly

    T(x) = A(x + u(x)),   A = G_m · M · L · G_f⁻¹ (an affine in mm),   u(x) = linear part of G_f applied to v(p),

u being a displacement field in mm on the fixed network grid (exact at its voxels, trilinear in between). In
``gvsl match`` both network images live on one grid of the fixed scan's frame (G_f = G_m), and the moving scan's
point is ``initial(T(x))``, ``initial`` being the initial alignment: ``physical_transforms`` folds it into A.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.networks.conventions import Conventions, affine_voxel_matrix, flow_sampled_voxels, identity_grid


class PhysicalTransforms(NamedTuple):
    """``transform`` maps a fixed LPS point (mm) to the corresponding moving LPS point: ``affine`` after ``deformable``.

    ``displacement_mm``: u, a 3-component float64 image on the fixed network grid (LPS mm);
    ``deformable``: the transform x -> x + u(x), on that grid extended by one edge voxel on each side so every point
    of the fixed image's voxel box is covered (outside its domain a displacement field transform moves nothing).
    """

    affine: sitk.AffineTransform
    displacement_mm: sitk.Image
    deformable: sitk.DisplacementFieldTransform
    transform: sitk.CompositeTransform


def index_to_physical_dhw(grid: sitk.Image) -> np.ndarray:
    """(4, 4) matrix mapping a voxel index (d, h, w, 1) of ``grid`` to its LPS point (x, y, z, 1) in mm."""
    direction = np.asarray(grid.GetDirection(), float).reshape(3, 3)
    out = np.eye(4)
    out[:3, :3] = (direction * np.asarray(grid.GetSpacing(), float))[:, ::-1]  # columns (i, j, k) -> (d, h, w)
    out[:3, 3] = grid.GetOrigin()
    return out


def field_map_at_zero_flow(shape_dhw: tuple[int, ...], conventions: Conventions) -> np.ndarray:
    """L: the (4, 4) voxel matrix (d, h, w) that the field's voxel map is at zero flow."""
    sampled = flow_sampled_voxels(torch.zeros(1, 3, *shape_dhw, dtype=torch.float64), conventions)[0]
    corner = sampled[:, 0, 0, 0]
    out = np.eye(4)
    out[:3, 0] = (sampled[:, 1, 0, 0] - corner).numpy()
    out[:3, 1] = (sampled[:, 0, 1, 0] - corner).numpy()
    out[:3, 2] = (sampled[:, 0, 0, 1] - corner).numpy()
    out[:3, 3] = corner.numpy()
    return out


def network_to_frame(theta: torch.Tensor, flow: torch.Tensor, conventions: Conventions, fixed_grid: sitk.Image,
                     moving_grid: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """A (4, 4, LPS mm) and u (a 3-component float64 image on ``fixed_grid``, LPS mm) from the network's outputs: the
    map fixed grid point x -> moving grid point A(x + u(x)) that the network samples (see the module doc).

    Args:
        theta: (3, 4) or (1, 3, 4) affine head output [R | t].
        flow: (3, D, H, W) or (1, 3, D, H, W) displacement in voxels, channels (d, h, w), on the fixed network grid.
        conventions: the network's conventions ("corrected" or "original").
        fixed_grid, moving_grid: images whose geometry is the fixed / moving network grid (array shape (D, H, W)).
    """
    theta64 = theta.detach().to("cpu", torch.float64).reshape(1, 3, 4)
    flow64 = flow.detach().to("cpu", torch.float64)
    flow64 = flow64.reshape(1, 3, *flow64.shape[-3:])
    shape_dhw = tuple(flow64.shape[2:])
    for name, grid in (("fixed", fixed_grid), ("moving", moving_grid)):
        if tuple(reversed(grid.GetSize())) != shape_dhw:
            raise ValueError(f"{name} network grid is {tuple(reversed(grid.GetSize()))} (D, H, W) but the field is "
                             f"{shape_dhw}")
    fixed_to_mm = index_to_physical_dhw(fixed_grid)
    moving_to_mm = index_to_physical_dhw(moving_grid)
    zero_flow_map = field_map_at_zero_flow(shape_dhw, conventions)
    voxel_matrix = affine_voxel_matrix(theta64, shape_dhw, conventions)[0].numpy()
    affine_mm = moving_to_mm @ voxel_matrix @ zero_flow_map @ np.linalg.inv(fixed_to_mm)

    # v = L⁻¹(g(p)) - p in voxels (d, h, w), then u = G_f's linear part applied to v, in mm (x, y, z).
    sampled = flow_sampled_voxels(flow64, conventions)[0]
    inverse_lin = torch.from_numpy(np.linalg.inv(zero_flow_map[:3, :3]))
    offset = torch.from_numpy(zero_flow_map[:3, 3]).view(3, 1, 1, 1)
    v = torch.einsum("ij,jdhw->idhw", inverse_lin, sampled - offset) - identity_grid(shape_dhw, flow64)[0]
    u_mm = torch.einsum("ij,jdhw->dhwi", torch.from_numpy(fixed_to_mm[:3, :3]), v)
    displacement_mm = sitk.GetImageFromArray(u_mm.numpy(), isVector=True)
    displacement_mm.CopyInformation(fixed_grid)
    return affine_mm, displacement_mm


def affine_matrix(transform: sitk.Transform) -> np.ndarray:
    """The (4, 4) homogeneous matrix (LPS mm) of an affine SimpleITK transform (translation, Euler, affine, ...)."""
    out = np.eye(4)
    origin = np.zeros(3)
    out[:3, 3] = transform.TransformPoint(origin.tolist())
    for axis in range(3):
        out[:3, axis] = np.asarray(transform.TransformPoint(np.eye(3)[axis].tolist())) - out[:3, 3]
    return out


def physical_transforms(affine_mm: np.ndarray, displacement_mm: sitk.Image,
                        initial: sitk.Transform | None = None) -> PhysicalTransforms:
    """SimpleITK transforms for T(x) = initial(A(x + u(x))): ``affine`` = initial ∘ A (an affine in mm), ``deformable``
    = x -> x + u(x) with u = ``displacement_mm`` (3-component float64, LPS mm)."""
    if initial is not None:
        affine_mm = affine_matrix(initial) @ affine_mm
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([float(a) for a in affine_mm[:3, :3].ravel()])
    affine.SetTranslation([float(a) for a in affine_mm[:3, 3]])
    deformable = sitk.DisplacementFieldTransform(sitk.ZeroFluxNeumannPad(displacement_mm, [1, 1, 1], [1, 1, 1]))
    # A composite transform applies its last transform first: T(x) = affine(deformable(x)).
    transform = sitk.CompositeTransform([affine, deformable])
    return PhysicalTransforms(affine, displacement_mm, deformable, transform)


def network_to_physical(theta: torch.Tensor, flow: torch.Tensor, conventions: Conventions, fixed_grid: sitk.Image,
                        moving_grid: sitk.Image, initial: sitk.Transform | None = None) -> PhysicalTransforms:
    """The fixed -> moving transform in LPS mm from the network's affine and field (see the module doc and
    ``network_to_frame``), after which ``initial`` (an affine: moving grid point -> moving scan point), if given."""
    return physical_transforms(*network_to_frame(theta, flow, conventions, fixed_grid, moving_grid), initial)
