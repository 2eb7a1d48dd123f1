"""Test-time refinement: optimise the network's affine and a displacement on the pair itself (instance optimisation).

Everything is in the frame (``gvsl.match.frame``) and in millimetres: a fixed frame point x is sent to the moving
frame point ``y = A(x + u(x))``, A an affine, u a displacement on a regular control grid (trilinear between its
nodes). Starting from the network's A and u = 0, Adam minimises

    local NCC(moving(y(x)), fixed(x))  +  diffusion_weight · mean |∇u|²   (∇u in mm per mm)

over the fixed volume's box (only where y(x) lies in the moving scan's data: beyond them its image is zero padding,
whose edge would drag the match; ``LevelImages.moving_data_box_mm``), from coarse to fine: at the coarsest level
first the affine alone, then at every level the affine and u together. The network's displacement field is not the
starting u: from a checkpoint whose field is rough (a network pre-trained on different brains folds 0.2-0.5 % of the
voxels) the refinement could not undo it on its control grid (known-warp head: 0.84 mm from the network's field,
0.47 mm from the field smoothed with a 4 mm Gaussian, 0.44 mm from the affine alone; the same Dice between brains
from the smoothed field as from the affine; benchmarks/RESULTS.md). Parameters are scaled by the frame's radius so
that one learning rate moves points by similar amounts whichever parameter changes; the learning rate is in voxels
of the level, so a coarse level takes proportionally longer steps. Each stage runs until it has converged
(``PlateauSchedule``), at most ``iterations`` steps. It works from any network, even an untrained one: it only needs
a starting affine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch
from torch.optim.adam import adam

from gvsl.match.grid import RegularGrid, interpolation_matrix
from gvsl.match.regularisers import InterpolatedDiffusion
from gvsl.match.similarity import FixedImageNCC


@dataclass(frozen=True)
class RefineConfig:
    """``iterations``: the most Adam steps per stage (0: keep the network's answer); stages are the affine alone at
    the coarsest level, then affine + displacement at each level; a stage ends earlier once its loss has converged
    (``patience``, ``tolerance``, ``halvings``: see ``PlateauSchedule``). ``levels``: resolution levels, each twice
    as coarse as the next; the finest has ``finest_spacing_mm`` or the inputs' own resolution, whichever is coarser
    (finer than the scans adds no detail). ``control_spacing_mm``: node distance of u's control grid.
    ``ncc_window``: side of the NCC boxes, voxels. ``diffusion_weight``: weight of mean |∇u|² (u in voxels of the
    level). ``learning_rate``: Adam's at the start of each stage, in voxels of the level per step. Chosen on the
    known-warp head and the donor pairs of ``benchmarks/match_intersubject.py`` (benchmarks/RESULTS.md)."""

    iterations: int = 200
    levels: int = 3
    finest_spacing_mm: float = 2.0
    control_spacing_mm: float = 8.0
    ncc_window: int = 5
    diffusion_weight: float = 2.25
    learning_rate: float = 0.1
    patience: int = 10
    tolerance: float = 1e-4
    halvings: int = 3

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.levels < 1:
            raise ValueError(f"refinement needs iterations >= 0 and levels >= 1, got {self.iterations}, {self.levels}")
        if min(self.finest_spacing_mm, self.control_spacing_mm, self.learning_rate) <= 0 or self.ncc_window < 1:
            raise ValueError("refinement spacings, learning rate and NCC window must be positive")
        if self.patience < 1 or self.tolerance < 0 or self.halvings < 0:
            raise ValueError("refinement needs patience >= 1 and tolerance, halvings >= 0")

    def level_spacings(self, input_spacing_mm: float) -> list[float]:
        """Voxel sizes (mm) of the levels, coarsest first, for inputs with detail down to ``input_spacing_mm``."""
        finest = max(float(input_spacing_mm), self.finest_spacing_mm)
        return [finest * 2 ** k for k in reversed(range(self.levels))]


class PlateauSchedule:
    """The learning rate of one stage, as a factor of the starting one: 1 until the loss has not fallen below
    (1 - ``tolerance``) times its best for ``patience`` steps, then halved, and so on; the stage ends after
    ``halvings`` halvings (``done``), at the latest after ``iterations`` steps. A stage far from its optimum runs
    long, one that starts there (a self-pair, a good network answer) ends after about
    (``halvings`` + 1) · ``patience`` steps, with steps that shrink as it goes."""

    def __init__(self, config: RefineConfig):
        self.config = config
        self.best = math.inf
        self.waited = 0
        self.halved = 0
        self.steps = 0

    @property
    def factor(self) -> float:
        return 0.5 ** self.halved

    @property
    def done(self) -> bool:
        return self.halved > self.config.halvings or self.steps >= self.config.iterations

    def step(self, loss: float) -> None:
        self.steps += 1
        if loss < self.best * (1 - self.config.tolerance):
            self.best, self.waited = loss, 0
            return
        self.waited += 1
        if self.waited >= self.config.patience:
            self.halved, self.waited = self.halved + 1, 0


class Adam:
    """Adam (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8) on a few tensors, through ``torch.optim.adam.adam``,
    the update ``torch.optim.Adam`` itself runs: constructing a first ``torch.optim`` optimizer imports
    ``torch._dynamo``, which costs a match on a CPU 1-3 s, about as long as importing torch."""

    def __init__(self, parameters: list[torch.Tensor], lr: float):
        self.parameters = parameters
        self.lr = lr
        self.exp_avgs = [torch.zeros_like(p) for p in parameters]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in parameters]
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in parameters]

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        adam(self.parameters, [p.grad for p in self.parameters], self.exp_avgs, self.exp_avg_sqs, [], self.steps,
             foreach=False, amsgrad=False, beta1=0.9, beta2=0.999, lr=self.lr, weight_decay=0.0, eps=1e-8,
             maximize=False)


class LevelImages(NamedTuple):
    """Fixed and moving images of one level, (1, 1, D, H, W) float32 on ``grid``; ``moving_data_box_mm``: the
    (low, high) corners (x, y, z mm) of where ``moving`` holds data of the moving scan, None for everywhere."""

    fixed: torch.Tensor
    moving: torch.Tensor
    grid: RegularGrid
    moving_data_box_mm: tuple[np.ndarray, np.ndarray] | None = None


class FrameMap(torch.nn.Module):
    """y = c + L (z - c) + r t with z = x + u(x): the map being optimised (see the module doc).

    ``centre``/``radius``: the frame's centre (mm) and half diagonal / sqrt(3) (mm), which scale the parameters;
    ``control``: u's grid (nodes).
    """

    def __init__(self, affine_mm: np.ndarray, control: RegularGrid, centre: np.ndarray, radius: float):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32))
        self.register_buffer("nodes_xyz", control.points_xyz().permute(3, 0, 1, 2).contiguous())
        self.radius = float(radius)
        self.control = control
        linear = torch.as_tensor(affine_mm[:3, :3], dtype=torch.float32)
        offset = torch.as_tensor(affine_mm[:3, 3], dtype=torch.float32)
        self.linear = torch.nn.Parameter(linear.clone())
        self.translation = torch.nn.Parameter((offset - self.centre + linear @ self.centre) / self.radius)
        self.delta = torch.nn.Parameter(torch.zeros(3, *control.shape_dhw))

    def interpolation(self, grid: RegularGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The per-axis weights ((D, n_d), (H, n_h), (W, n_w)) that interpolate node values onto ``grid``'s voxels;
        ValueError if a voxel centre lies beyond the control grid (where interpolation would hold the edge value)."""
        low = self.control.origin_xyz
        high = low + self.control.spacing_mm * (np.asarray(self.control.shape_dhw[::-1]) - 1)
        first = grid.origin_xyz
        last = first + grid.spacing_mm * (np.asarray(grid.shape_dhw[::-1]) - 1)
        tolerance = 1e-3 * self.control.spacing_mm
        if np.any(first < low - tolerance) or np.any(last > high + tolerance):
            raise ValueError(f"grid {first}..{last} mm reaches beyond the control grid {low}..{high} mm")
        return tuple(interpolation_matrix(grid.positions_mm(axis), self.control, axis).to(self.centre.device)
                     for axis in (2, 1, 0))

    def control_displacement(self) -> torch.Tensor:
        """u at the control grid's nodes, (3, n_d, n_h, n_w) in mm, channels (x, y, z)."""
        return self.radius * self.delta

    @staticmethod
    def interpolate(node_values: torch.Tensor, interpolation_dhw: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                    ) -> torch.Tensor:
        """``node_values`` (3, n_d, n_h, n_w) interpolated by ``interpolation_dhw`` (``interpolation``) onto a
        grid's voxels: (D, H, W, 3), channels last."""
        wd, wh, ww = interpolation_dhw
        values = torch.einsum("cijk,wk->ijwc", node_values, ww)
        values = torch.einsum("ijwc,hj->ihwc", values, wh)
        return torch.einsum("ihwc,di->dhwc", values, wd)

    def map_at_nodes(self, nodes: torch.Tensor) -> torch.Tensor:
        """y = A(x + u(x)) at the control grid's nodes, (3, n_d, n_h, n_w) in mm, from u there (``nodes``)."""
        linear, offset = self.affine()
        return torch.einsum("ij,jdhw->idhw", linear, self.nodes_xyz + nodes) + offset.view(3, 1, 1, 1)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A as its linear part (3, 3) and its offset (3,) in mm: A(z) = linear @ z + offset."""
        return self.linear, self.centre - self.linear @ self.centre + self.radius * self.translation

    def affine_mm(self) -> np.ndarray:
        """A as a (4, 4) matrix (mm)."""
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = (part.detach().cpu().double().numpy() for part in self.affine())
        return out


def sampling_coordinates(frame_map: FrameMap, nodes: torch.Tensor, grid: RegularGrid,
                         interpolation_dhw: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Where ``grid``'s voxels x are sent, y(x) = A(x + u(x)) with u given at the nodes (``nodes``), in
    ``grid_sample``'s coordinates on ``grid`` (``RegularGrid.to_sampling``): (1, D, H, W, 3).

    u is trilinear between the nodes, and trilinear interpolation reproduces affine functions, so y is trilinear
    between the nodes too: y is computed at the nodes and interpolated once, which costs a step on a 2 mm head
    about 20 ms less than the affine applied to every voxel (a matrix product of millions of points by a 3 x 3
    matrix, and its gradient)."""
    scale, shift = grid.to_sampling(nodes)
    at_nodes = frame_map.map_at_nodes(nodes) * scale.view(3, 1, 1, 1) + shift.view(3, 1, 1, 1)
    return frame_map.interpolate(at_nodes, interpolation_dhw).unsqueeze(0)


def supported_voxels(level: LevelImages, coordinates: torch.Tensor) -> torch.Tensor | None:
    """(D, H, W) 1 where the match at ``coordinates`` (``sampling_coordinates`` on ``level.grid``, (1, D, H, W,
    3)) lies in ``level.moving_data_box_mm``, else 0; None without a box."""
    if level.moving_data_box_mm is None:
        return None
    with torch.no_grad():
        low, high = level.grid.sampling_box(*level.moving_data_box_mm, coordinates)
        distance = (coordinates[0] - (low + high) / 2).abs_().sub_((high - low) / 2).unbind(-1)
        return (torch.maximum(torch.maximum(distance[0], distance[1]), distance[2]) <= 0).to(coordinates.dtype)


def refine_level(frame_map: FrameMap, level: LevelImages, config: RefineConfig, affine_only: bool = False) -> int:
    """Adam steps at one level, on the affine alone or on everything, until ``PlateauSchedule`` ends the stage;
    returns the number of steps."""
    interpolation_dhw = frame_map.interpolation(level.grid)
    similarity = FixedImageNCC(level.fixed, config.ncc_window)
    parameters = [frame_map.linear, frame_map.translation] + ([] if affine_only else [frame_map.delta])
    learning_rate = config.learning_rate * level.grid.spacing_mm / frame_map.radius  # voxels -> radius units
    optimizer = Adam(parameters, learning_rate)
    schedule = PlateauSchedule(config)
    diffusion = InterpolatedDiffusion(interpolation_dhw)
    while not schedule.done:
        optimizer.lr = learning_rate * schedule.factor
        nodes = frame_map.control_displacement()
        coordinates = sampling_coordinates(frame_map, nodes, level.grid, interpolation_dhw)
        loss = similarity.loss(level.grid.sample_at(level.moving, coordinates), supported_voxels(level, coordinates))
        if not affine_only and config.diffusion_weight:
            voxels = nodes / level.grid.spacing_mm
            loss = loss + config.diffusion_weight * diffusion.diffusion(voxels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step(float(loss.detach()))
    return schedule.steps


def refine(levels: list[LevelImages], affine_mm: np.ndarray, field_grid: sitk.Image,
           box_mm: tuple[np.ndarray, np.ndarray], config: RefineConfig) -> tuple[np.ndarray, sitk.Image, int]:
    """Refine the frame map (A, u) from the network's affine ``affine_mm`` (4, 4) and u = 0 on ``levels`` (coarsest
    first, on one device, where the optimisation runs); returns the refined A (4, 4), u on the grid of
    ``field_grid`` (a 3-component float64 image, LPS mm) and the number of Adam steps taken in all. ``box_mm``: the
    (low, high) corners of the frame."""
    low, high = (np.asarray(b, float) for b in box_mm)
    nodes = tuple(int(n) for n in (np.ceil((high - low) / config.control_spacing_mm) + 1)[::-1])
    control = RegularGrid(nodes, low, config.control_spacing_mm)
    radius = float(np.linalg.norm(high - low) / 2 / np.sqrt(3))
    steps = 0
    with torch.enable_grad():
        frame_map = FrameMap(affine_mm, control, (low + high) / 2, radius).to(levels[0].fixed.device)
        if config.iterations:
            steps += refine_level(frame_map, levels[0], config, affine_only=True)
            for level in levels:
                steps += refine_level(frame_map, level, config)
    with torch.no_grad():
        on_field_grid = frame_map.interpolation(RegularGrid.of(field_grid))
        field = frame_map.interpolate(frame_map.control_displacement(), on_field_grid).cpu().double().numpy()
    refined = sitk.GetImageFromArray(field, isVector=True)
    refined.CopyInformation(field_grid)
    return frame_map.affine_mm(), refined, steps
