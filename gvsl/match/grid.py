"""Regular identity-direction grids in LPS millimetres: their points, sampling a volume on them, and linear
interpolation weights between the nodes of a coarser grid (the refinement's control grid)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.networks.warp import grid_sample_threaded


class RegularGrid(NamedTuple):
    """An identity-direction grid: ``shape_dhw`` voxels, first voxel centre ``origin_xyz`` (LPS mm), isotropic
    ``spacing_mm``."""

    shape_dhw: tuple[int, int, int]
    origin_xyz: np.ndarray
    spacing_mm: float

    @classmethod
    def of(cls, image: sitk.Image) -> RegularGrid:
        return cls(tuple(reversed(image.GetSize())), np.asarray(image.GetOrigin(), float), float(image.GetSpacing()[0]))

    def points_xyz(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(D, H, W, 3) float32 LPS points of the voxel centres, (x, y, z) last."""
        axes = [torch.arange(n, dtype=torch.float32, device=device) for n in self.shape_dhw]
        xyz = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flip(-1)
        origin = torch.as_tensor(self.origin_xyz, dtype=torch.float32, device=device)
        return (origin + self.spacing_mm * xyz).contiguous()

    def positions_mm(self, axis_xyz: int) -> np.ndarray:
        """Coordinates (mm) of the voxel centres along axis ``axis_xyz`` (0 = x)."""
        return self.origin_xyz[axis_xyz] + self.spacing_mm * np.arange(self.shape_dhw[2 - axis_xyz])

    def sampling_box(self, low_mm: np.ndarray, high_mm: np.ndarray, like: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The box with (x, y, z) corners ``low_mm``, ``high_mm`` (LPS mm) in ``grid_sample``'s coordinates
        (``to_sampling``), as tensors of ``like``'s dtype and device."""
        scale, shift = self.to_sampling(like)
        return tuple(torch.as_tensor(corner, dtype=like.dtype, device=like.device) * scale + shift
                     for corner in (low_mm, high_mm))

    def sample_at(self, volume: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        """``volume`` (1, C, *shape_dhw) on this grid, trilinear at ``coordinates`` (1, d, h, w, 3) in
        ``grid_sample``'s convention (``to_sampling``), 0 outside."""
        return grid_sample_threaded(volume, coordinates.to(volume.dtype))

    def to_sampling(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (3,) in ``like``'s dtype and device: an LPS point x (mm) is at ``grid_sample``'s
        coordinates scale * x + shift on this grid (-1 and +1 at the first and last voxel centres,
        ``align_corners=True``; (x, y, z) order)."""
        options = {"dtype": like.dtype, "device": like.device}
        size_xyz = np.asarray(self.shape_dhw[::-1], float)
        scale = 2 / (np.maximum(size_xyz - 1, 1) * self.spacing_mm)
        return torch.as_tensor(scale, **options), torch.as_tensor(-self.origin_xyz * scale - 1, **options)


def interpolation_matrix(positions_mm: np.ndarray, nodes_grid: RegularGrid, axis_xyz: int) -> torch.Tensor:
    """(len(positions), nodes) weights of linear interpolation between the nodes of ``nodes_grid`` along axis
    ``axis_xyz`` (0 = x) at coordinates ``positions_mm`` on that axis (clamped at the ends)."""
    nodes = nodes_grid.shape_dhw[2 - axis_xyz]
    t = np.clip((positions_mm - nodes_grid.origin_xyz[axis_xyz]) / nodes_grid.spacing_mm, 0, nodes - 1)
    low = np.minimum(np.floor(t).astype(int), nodes - 2) if nodes > 1 else np.zeros(len(t), int)
    out = np.zeros((len(t), nodes), np.float32)
    rows = np.arange(len(t))
    if nodes == 1:
        out[:, 0] = 1
    else:
        out[rows, low] = 1 - (t - low)
        out[rows, low + 1] = t - low
    return torch.from_numpy(out)
