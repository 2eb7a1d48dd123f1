"""Test-time refinement: optimise the network's affine and displacement on the pair itself (instance optimisation).

Everything is in the frame (``gvsl.match.frame``) and in millimetres: a fixed frame point x is sent to the moving
frame point ``y = A(x + u(x))``, A an affine, u = u_network + δ with δ a displacement on a regular control grid
(trilinear between its nodes). Starting from the network's A and u (δ = 0), Adam minimises

    local NCC(moving(y(x)), fixed(x))  +  diffusion_weight · mean |∇u|²   (∇u in mm per mm)

over the fixed volume's box, from coarse to fine: at the coarsest level first the affine alone, then at every level
the affine and δ together. Parameters are scaled by the frame's radius so that one learning rate moves points by
similar amounts whichever parameter changes. It works from any network, even an untrained one: it only needs a
starting point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.losses import local_ncc_loss, smoothness_loss
from gvsl.networks.warp import sample_voxels


@dataclass(frozen=True)
class RefineConfig:
    """``iterations``: Adam steps per stage (0: keep the network's answer); stages are the affine alone at the
    coarsest level, then affine + displacement at each level. ``levels``: resolution levels, each twice as coarse as
    the next; the finest has ``finest_spacing_mm`` or the inputs' own resolution, whichever is coarser (finer than
    the scans adds no detail). ``control_spacing_mm``: node distance of δ's grid. ``ncc_window``: side of the NCC
    boxes, voxels. ``diffusion_weight``: weight of mean |∇u|². ``learning_rate``: Adam's at the start of each stage
    (decaying linearly to 0), in units of the frame radius."""

    iterations: int = 60
    levels: int = 2
    finest_spacing_mm: float = 2.0
    control_spacing_mm: float = 8.0
    ncc_window: int = 5
    diffusion_weight: float = 3.0
    learning_rate: float = 2e-3

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.levels < 1:
            raise ValueError(f"refinement needs iterations >= 0 and levels >= 1, got {self.iterations}, {self.levels}")
        if min(self.finest_spacing_mm, self.control_spacing_mm, self.learning_rate) <= 0 or self.ncc_window < 1:
            raise ValueError("refinement spacings, learning rate and NCC window must be positive")

    def level_spacings(self, input_spacing_mm: float) -> list[float]:
        """Voxel sizes (mm) of the levels, coarsest first, for inputs with detail down to ``input_spacing_mm``."""
        finest = max(float(input_spacing_mm), self.finest_spacing_mm)
        return [finest * 2 ** k for k in reversed(range(self.levels))]


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
        """(1, 3, D, H, W) float32 LPS points of the voxel centres, channels (x, y, z)."""
        axes = [torch.arange(n, dtype=torch.float32, device=device) for n in self.shape_dhw]
        xyz = torch.stack(torch.meshgrid(*axes, indexing="ij")).flip(0)
        origin = torch.as_tensor(self.origin_xyz, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1)
        return origin + self.spacing_mm * xyz.unsqueeze(0)

    def positions_mm(self, axis_xyz: int) -> np.ndarray:
        """Coordinates (mm) of the voxel centres along axis ``axis_xyz`` (0 = x)."""
        return self.origin_xyz[axis_xyz] + self.spacing_mm * np.arange(self.shape_dhw[2 - axis_xyz])

    def sample(self, volume: torch.Tensor, points_xyz: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        """``volume`` (N, C, *shape_dhw) on this grid, trilinear at (N or 1, 3, ...) LPS points (x, y, z)."""
        origin = torch.as_tensor(self.origin_xyz, dtype=points_xyz.dtype, device=points_xyz.device).view(1, 3, 1, 1, 1)
        return sample_voxels(volume, ((points_xyz - origin) / self.spacing_mm).flip(1), padding_mode=padding_mode)


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


class LevelImages(NamedTuple):
    """Fixed and moving images of one level, (1, 1, D, H, W) float32 on ``grid``."""

    fixed: torch.Tensor
    moving: torch.Tensor
    grid: RegularGrid


class Stage(NamedTuple):
    """What stays fixed while one level is optimised: its points, the network's displacement there, and the
    per-axis weights that interpolate the control grid onto its voxels ((D, n_d), (H, n_h), (W, n_w))."""

    points: torch.Tensor
    network_displacement: torch.Tensor
    interpolation_dhw: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class FrameMap(torch.nn.Module):
    """y = c + L (z - c) + r t with z = x + u_network(x) + r δ̂(x): the map being optimised (see the module doc).

    ``centre``/``radius``: the frame's centre (mm) and half diagonal / sqrt(3) (mm), which scale the parameters;
    ``control``: δ's grid (nodes).
    """

    def __init__(self, affine_mm: np.ndarray, displacement_mm: sitk.Image, control: RegularGrid, centre: np.ndarray,
                 radius: float):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32))
        self.radius = float(radius)
        self.control = control
        linear = torch.as_tensor(affine_mm[:3, :3], dtype=torch.float32)
        offset = torch.as_tensor(affine_mm[:3, 3], dtype=torch.float32)
        self.linear = torch.nn.Parameter(linear.clone())
        self.translation = torch.nn.Parameter((offset - self.centre + linear @ self.centre) / self.radius)
        self.delta = torch.nn.Parameter(torch.zeros(3, *control.shape_dhw))
        field = np.moveaxis(sitk.GetArrayFromImage(displacement_mm), -1, 0)  # (3 = x y z, D, H, W)
        self.register_buffer("network_field", torch.from_numpy(field.astype(np.float32))[None])
        self.network_grid = RegularGrid.of(displacement_mm)

    def stage(self, grid: RegularGrid) -> Stage:
        points = grid.points_xyz(self.centre.device)
        network = self.network_grid.sample(self.network_field, points, padding_mode="border")
        weights = tuple(interpolation_matrix(grid.positions_mm(axis), self.control, axis).to(points.device)
                        for axis in (2, 1, 0))
        return Stage(points, network, weights)

    def displacement(self, stage: Stage) -> torch.Tensor:
        """u (1, 3, D, H, W) in mm, channels (x, y, z), at the stage's points."""
        wd, wh, ww = stage.interpolation_dhw
        delta = torch.einsum("cijk,wk->cijw", self.delta, ww)
        delta = torch.einsum("cijw,hj->cihw", delta, wh)
        delta = torch.einsum("cihw,di->cdhw", delta, wd)
        return stage.network_displacement + self.radius * delta.unsqueeze(0)

    def affine(self, points_xyz: torch.Tensor) -> torch.Tensor:
        centre = self.centre.view(1, 3, 1, 1, 1)
        moved = torch.einsum("ij,njdhw->nidhw", self.linear, points_xyz - centre)
        return centre + moved + self.radius * self.translation.view(1, 3, 1, 1, 1)

    def affine_mm(self) -> np.ndarray:
        """A as a (4, 4) matrix (mm)."""
        linear = self.linear.detach().cpu().double().numpy()
        centre = self.centre.cpu().double().numpy()
        out = np.eye(4)
        out[:3, :3] = linear
        out[:3, 3] = centre - linear @ centre + self.radius * self.translation.detach().cpu().double().numpy()
        return out


def refine_level(frame_map: FrameMap, level: LevelImages, config: RefineConfig, affine_only: bool = False) -> float:
    """``config.iterations`` Adam steps at one level, on the affine alone or on everything; returns the last loss."""
    stage = frame_map.stage(level.grid)
    parameters = [frame_map.linear, frame_map.translation] + ([] if affine_only else [frame_map.delta])
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    loss = torch.zeros((), device=level.fixed.device)
    for step in range(config.iterations):
        # Linear decay to 0: Adam's steps keep their size while gradients are small, so without it the answer
        # wanders by a fraction of a voxel around the optimum (e.g. around the identity of a self-pair).
        optimizer.param_groups[0]["lr"] = config.learning_rate * (1 - step / config.iterations)
        displacement = frame_map.displacement(stage)
        warped = level.grid.sample(level.moving, frame_map.affine(stage.points + displacement))
        loss = local_ncc_loss(warped, level.fixed, config.ncc_window)
        if config.diffusion_weight and not affine_only:
            loss = loss + config.diffusion_weight * smoothness_loss(displacement / level.grid.spacing_mm)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def refine(levels: list[LevelImages], affine_mm: np.ndarray, displacement_mm: sitk.Image,
           box_mm: tuple[np.ndarray, np.ndarray], config: RefineConfig) -> tuple[np.ndarray, sitk.Image]:
    """Refine the frame map (A, u) on ``levels`` (coarsest first, on one device, where the optimisation runs);
    returns the refined A (4, 4) and u on the grid of ``displacement_mm`` (a 3-component float64 image, LPS mm).
    ``box_mm``: the (low, high) corners of the frame."""
    low, high = (np.asarray(b, float) for b in box_mm)
    nodes = tuple(int(n) for n in (np.ceil((high - low) / config.control_spacing_mm) + 1)[::-1])
    control = RegularGrid(nodes, low, config.control_spacing_mm)
    radius = float(np.linalg.norm(high - low) / 2 / np.sqrt(3))
    with torch.enable_grad():
        frame_map = FrameMap(affine_mm, displacement_mm, control, (low + high) / 2, radius).to(levels[0].fixed.device)
        if config.iterations:
            refine_level(frame_map, levels[0], config, affine_only=True)
            for level in levels:
                refine_level(frame_map, level, config)
    with torch.no_grad():
        field = frame_map.displacement(frame_map.stage(frame_map.network_grid))[0].cpu().double().numpy()
    refined = sitk.GetImageFromArray(np.moveaxis(field, 0, -1), isVector=True)
    refined.CopyInformation(displacement_mm)
    return frame_map.affine_mm(), refined
