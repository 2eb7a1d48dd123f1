"""An affine head that sees where things are: block matching of A's and B's features and a least-squares fit.

The paper's affine head regresses the affine from globally averaged bottleneck features, which hardly change when
an image is shifted by a few voxels (see benchmarks/RESULTS.md). This head compares the two images' features
directly: on a coarse grid (every ``pool`` voxels), each block of A is compared (cosine similarity of learned
descriptors) with B's blocks within ``radius`` blocks, the soft arg-max of the similarities says where it lies in
B, and the affine that best explains these correspondences is fitted by weighted least squares (weights: how
peaked each block's match is), with a small ridge towards the identity so that the fit is always defined. A soft
arg-max over uncertain matches is pulled towards no motion, so the estimate falls short; the head therefore runs
``passes`` times, each pass matching A against B's features warped by the affine so far and composing the residual
(measured: 7.9 mm with one pass, 5.6 mm with five, from the same weights). Position enters by construction.

Training runs one ``MatchingStage`` (``pool``, ``radius``, ``passes``). ``forward`` also takes a coarse-to-fine
schedule of stages: the same learned descriptors averaged over smaller blocks, each stage starting from the affine the
one before found, so that the fit rests on finer correspondences (``gvsl.match`` uses one; benchmarks/RESULTS.md).
``displacement`` turns the same matches, after the affine, into a smooth field: each block's residual match, averaged
under a Gaussian with the matches' peakedness as weights, added up over ``passes`` (each pass matching B warped by
the affine and the field so far). Not in the paper, whose field comes from a convolution head (``GVSL.deformation``).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gvsl.networks.blocks import DoubleConv
from gvsl.networks.conventions import affine_voxel_matrix, corrected_theta, identity_grid
from gvsl.networks.warp import sample_voxels, warp_affine, warp_moving

RIDGE = 1e-3  # pull of the fit towards the identity, relative to the total weight of the correspondences
# The matches' sharpness is exp(SHARPNESS_RATE * s) * INITIAL_SHARPNESS with s learned from 0; the rate lets Adam
# change it within tens of steps.
INITIAL_SHARPNESS = 10.0
SHARPNESS_RATE = 100.0
MAX_LOG_SHARPNESS = 5.0


class MatchingStage(NamedTuple):
    """One stage of the head: blocks of ``pool``^3 voxels, each matched within ``radius`` blocks, ``passes`` times;
    the affine is fitted to the matches of every ``stride``-th block of A along each axis."""

    pool: int
    radius: int
    passes: int
    stride: int = 1


def check_stages(stages: Sequence[MatchingStage]) -> tuple[MatchingStage, ...]:
    """``stages`` as a tuple of ``MatchingStage``; ValueError unless there is one or more, each of positive sizes."""
    stages = tuple(MatchingStage(*(int(v) for v in stage)) for stage in stages)
    if not stages or any(min(stage) < 1 for stage in stages):
        raise ValueError(f"matching stages need a positive pool, radius, passes and stride each, got {stages}")
    return stages


class FieldStage(NamedTuple):
    """``CorrelationAffineHead.displacement``'s settings: each voxel's descriptor matched within ``radius`` voxels,
    at every ``stride``-th voxel along each axis, ``passes`` times, smoothed by a Gaussian of ``sigma_voxels``."""

    radius: int
    passes: int
    sigma_voxels: float
    stride: int = 1


class CorrelationAffineHead(nn.Module):
    """``forward(local_a, local_b)`` -> (N, 3, 4) matrix [R | t] in the "corrected" convention (voxels, array axes
    d, h, w, about the volume centre) that samples B at the voxel matching each voxel of A.

    Descriptors: the (N, C, D, H, W) local features averaged over ``pool``^3 blocks, a DoubleConv to
    ``descriptors`` channels, unit length. Each block of A is matched among B's blocks within ``radius`` blocks;
    ``stage`` holds the training stage (``pool``, ``radius``, ``passes``).
    """

    def __init__(self, in_channels: int, descriptors: int = 16, pool: int = 4, radius: int = 3, passes: int = 4):
        super().__init__()
        (self.stage,) = check_stages([(pool, radius, passes)])
        self.describe = DoubleConv(in_channels, descriptors)
        self.sharpness = nn.Parameter(torch.zeros(()))

    def descriptors(self, local: torch.Tensor, pool: int) -> torch.Tensor:
        """Unit-length (N, descriptors, D/pool, H/pool, W/pool) descriptors: the block averages of the local
        features, then the DoubleConv (on the coarse grid, so each descriptor sees 5^3 blocks around it)."""
        return unit_length(self.describe(F.avg_pool3d(local, pool)).float())

    def forward(self, local_a: torch.Tensor, local_b: torch.Tensor,
                stages: Sequence[MatchingStage] | None = None) -> torch.Tensor:
        """The affine, from the training stage, or from ``stages`` run coarse to fine (each from the last's affine)."""
        shape = local_a.shape[2:]
        matrix = torch.eye(4, dtype=torch.float32, device=local_a.device).expand(local_a.shape[0], 4, 4)
        moved = False  # whether the affine so far differs from the identity, so that B must be warped by it
        for pool, radius, passes, stride in check_stages(stages or [self.stage]):
            desc_a = self.descriptors(local_a, pool)
            # Where A's blocks seem to lie in A itself: the soft arg-max's own bias (e.g. pulled away from the
            # volume's edges, where there is nothing to match), subtracted from every match, so identical images give
            # the identity exactly.
            bias, _ = self.soft_matches(desc_a, desc_a, pool, radius, stride)
            points_a = block_centres(desc_a.shape[2:], pool, desc_a)[::stride, ::stride, ::stride]
            for _ in range(passes):
                warped_b = warp_affine(local_b, corrected_theta(matrix, shape), "corrected") if moved else local_b
                shift, weight = self.soft_matches(desc_a, self.descriptors(warped_b, pool), pool, radius, stride)
                step = fit_affine(points_a.flatten(0, 2).expand(shift.shape[0], -1, -1),
                                  (points_a + shift - bias).flatten(1, 3), weight.flatten(1), shape)
                matrix, moved = matrix @ affine_voxel_matrix(step, shape, "corrected"), True
        return corrected_theta(matrix, shape)

    def displacement(self, local_a: torch.Tensor, local_b: torch.Tensor, theta: torch.Tensor, stage: FieldStage,
                     moving_support: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, D, H, W) displacement in voxels, channels (d, h, w), such that B sampled by ``theta`` after it
        ("corrected" convention, ``warp_moving``) matches A: the residual matches of single voxels' descriptors,
        smoothed (see the module doc). B's descriptors are warped rather than computed again on warped features.
        ``moving_support``: (N, 1, D, H, W), 1 where B holds scan data and 0 where it is padding; a voxel whose match
        so far lands outside it gives no weight, so the field there comes from its neighbours."""
        radius, passes, stride = int(stage.radius), int(stage.passes), int(stage.stride)
        sigma = float(stage.sigma_voxels)
        if min(radius, passes, stride) < 1 or not sigma > 0:
            raise ValueError(f"the field needs a positive radius, passes, stride and Gaussian width, got {stage}")
        shape = local_a.shape[2:]
        desc_a, desc_b = self.descriptors(local_a, 1), self.descriptors(local_b, 1)
        bias, _ = self.soft_matches(desc_a, desc_a, 1, radius, stride)
        # Where each voxel of the full grid lies on the grid of every stride-th voxel, to bring the field back.
        on_strided_grid = identity_grid(shape, desc_a) / stride
        flow = desc_a.new_zeros((local_a.shape[0], 3, *shape))
        # B's descriptors and, as one channel more, where B holds data: warped together, once per pass.
        channels = desc_b.shape[1]
        moving = desc_b if moving_support is None else torch.cat([desc_b, moving_support.to(desc_b.dtype)], dim=1)
        for _ in range(passes):
            warped = warp_moving(moving, theta, flow, "corrected")
            shift, weight = self.soft_matches(desc_a, unit_length(warped[:, :channels]), 1, radius, stride)
            weight = weight.unsqueeze(1)
            if moving_support is not None:
                weight = weight * warped[:, channels:, ::stride, ::stride, ::stride]
            residual = (shift - bias).permute(0, 4, 1, 2, 3) * weight
            smooth = (gaussian_smoothing(residual, sigma / stride)
                      / gaussian_smoothing(weight, sigma / stride).clamp_min(1e-6))
            flow = flow + (smooth if stride == 1 else
                           sample_voxels(smooth, on_strided_grid.expand(smooth.shape[0], -1, -1, -1, -1), "bilinear",
                                         "border"))
        return flow

    def soft_matches(self, desc_a: torch.Tensor, desc_b: torch.Tensor, pool: int, radius: int, stride: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each ``stride``-th block of A along each axis: where it lies in B, (N, d, h, w, 3) voxels (soft
        arg-max over the blocks within ``radius``), and how peaked its match is, (N, d, h, w) (1 for a certain
        match, 1/M for none)."""
        r, (depth, height, width) = radius, desc_a.shape[2:]
        # Channels last, so that each offset's dot products run over contiguous memory (faster on a CPU).
        a = desc_a[:, :, ::stride, ::stride, ::stride].permute(0, 2, 3, 4, 1).contiguous()
        padded = F.pad(desc_b, [r] * 6).permute(0, 2, 3, 4, 1).contiguous()
        offsets = torch.tensor(list(itertools.product(range(-r, r + 1), repeat=3)), dtype=a.dtype,
                               device=a.device)  # (M, 3) in blocks, (d, h, w)
        similarity = torch.stack([(a * padded[:, r + i:r + i + depth:stride, r + j:r + j + height:stride,
                                              r + k:r + k + width:stride]).sum(-1)
                                  for i, j, k in offsets.long().tolist()], dim=1)  # (N, M, d, h, w)
        log_sharpness = (SHARPNESS_RATE * self.sharpness).clamp(-MAX_LOG_SHARPNESS, MAX_LOG_SHARPNESS)
        probability = torch.softmax(INITIAL_SHARPNESS * torch.exp(log_sharpness) * similarity, dim=1)
        shift = torch.einsum("nmdhw,mc->ndhwc", probability, offsets) * pool
        return shift, probability.pow(2).sum(1)


def unit_length(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) ``x`` divided by its length along C (as ``F.normalize``, in less than half its time on a CPU)."""
    return x * torch.rsqrt((x * x).sum(1, keepdim=True).clamp_min(1e-24))


def gaussian_smoothing(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, D, H, W) ``x`` smoothed by a Gaussian of ``sigma`` voxels along each axis (3 sigma wide, the edges
    repeated). Written here so that the network needs nothing beyond torch."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        padding = [0] * 6
        padding[4 - 2 * axis:6 - 2 * axis] = [radius, radius]
        x = F.conv3d(F.pad(x, padding, mode="replicate"), kernel.view(shape).repeat(channels, 1, 1, 1, 1),
                     groups=channels)
    return x


def block_centres(blocks_dhw, pool: int, like: torch.Tensor) -> torch.Tensor:
    """(d, h, w, 3) full-resolution voxel positions (d, h, w) of the centres of ``pool``^3 blocks."""
    axes = [torch.arange(n, dtype=like.dtype, device=like.device) * pool + (pool - 1) / 2 for n in blocks_dhw]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def fit_affine(points_a: torch.Tensor, points_b: torch.Tensor, weights: torch.Tensor, shape_dhw) -> torch.Tensor:
    """The (N, 3, 4) [R | t] ("corrected" convention: q = R (p - c) + c + t, c the volume centre) that maps points
    of A (N, K, 3) onto the points of B by weighted (N, K) least squares with a ridge towards the identity, in
    coordinates scaled by half the volume size so that the ridge weighs all axes alike."""
    size = torch.tensor([float(s) for s in shape_dhw], dtype=points_a.dtype, device=points_a.device)
    centre, half = (size - 1) / 2, (size - 1).clamp(min=1) / 2
    a, b = (points_a - centre) / half, (points_b - centre) / half
    x = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)  # (N, K, 4)
    weighted = x * weights.unsqueeze(-1)
    ridge = RIDGE * weights.sum(dim=1).view(-1, 1, 1)
    eye = torch.eye(4, dtype=a.dtype, device=a.device)
    lhs = weighted.transpose(1, 2) @ x + ridge * eye
    rhs = weighted.transpose(1, 2) @ b + ridge * eye[:, :3]
    fitted = torch.linalg.solve(lhs, rhs).transpose(1, 2)  # (N, 3, 4) in scaled coordinates
    linear = half[:, None] * fitted[:, :, :3] / half[None, :]
    translation = half * fitted[:, :, 3]
    return torch.cat([linear, translation.unsqueeze(-1)], dim=-1)
