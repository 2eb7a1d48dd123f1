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
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from gvsl.networks.blocks import DoubleConv
from gvsl.networks.conventions import affine_voxel_matrix, corrected_theta
from gvsl.networks.warp import warp_affine

RIDGE = 1e-3  # pull of the fit towards the identity, relative to the total weight of the correspondences
# The matches' sharpness is exp(SHARPNESS_RATE * s) * INITIAL_SHARPNESS with s learned from 0; the rate lets Adam
# change it within tens of steps.
INITIAL_SHARPNESS = 10.0
SHARPNESS_RATE = 100.0
MAX_LOG_SHARPNESS = 5.0


class CorrelationAffineHead(nn.Module):
    """``forward(local_a, local_b)`` -> (N, 3, 4) matrix [R | t] in the "corrected" convention (voxels, array axes
    d, h, w, about the volume centre) that samples B at the voxel matching each voxel of A.

    Descriptors: the (N, C, D, H, W) local features averaged over ``pool``^3 blocks, a DoubleConv to
    ``descriptors`` channels, unit length. Each block of A is matched among B's blocks within ``radius`` blocks.
    """

    def __init__(self, in_channels: int, descriptors: int = 16, pool: int = 4, radius: int = 3, passes: int = 4):
        super().__init__()
        self.pool, self.radius, self.passes = pool, radius, passes
        self.describe = DoubleConv(in_channels, descriptors)
        self.sharpness = nn.Parameter(torch.zeros(()))
        offsets = torch.tensor(list(itertools.product(range(-radius, radius + 1), repeat=3)), dtype=torch.float32)
        self.register_buffer("offsets", offsets, persistent=False)  # (M, 3) in blocks, (d, h, w)

    def descriptors(self, local: torch.Tensor) -> torch.Tensor:
        """Unit-length (N, descriptors, D/pool, H/pool, W/pool) descriptors: the block averages of the local
        features, then the DoubleConv (on the coarse grid, so each descriptor sees 5^3 blocks around it)."""
        return F.normalize(self.describe(F.avg_pool3d(local, self.pool)).float(), dim=1)

    def forward(self, local_a: torch.Tensor, local_b: torch.Tensor) -> torch.Tensor:
        shape = local_a.shape[2:]
        desc_a = self.descriptors(local_a)
        # Where A's blocks seem to lie in A itself: the soft arg-max's own bias (e.g. pulled away from the volume's
        # edges, where there is nothing to match), subtracted from every match, so identical images give the
        # identity exactly.
        bias, _ = self.soft_matches(desc_a, desc_a)
        points_a = block_centres(desc_a.shape[2:], self.pool, desc_a)
        matrix = torch.eye(4, dtype=desc_a.dtype, device=desc_a.device).expand(local_a.shape[0], 4, 4)
        for n in range(self.passes):
            warped_b = local_b if n == 0 else warp_affine(local_b, corrected_theta(matrix, shape), "corrected")
            shift, weight = self.soft_matches(desc_a, self.descriptors(warped_b))
            step = fit_affine(points_a.flatten(0, 2).expand(shift.shape[0], -1, -1),
                              (points_a + shift - bias).flatten(1, 3), weight.flatten(1), shape)
            matrix = matrix @ affine_voxel_matrix(step, shape, "corrected")
        return corrected_theta(matrix, shape)

    def soft_matches(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each block of A: where it lies in B, (N, d, h, w, 3) voxels (soft arg-max), and how peaked its match
        is, (N, d, h, w) (1 for a certain match, 1/M for none)."""
        r = self.radius
        padded = F.pad(desc_b, [r] * 6)
        d, h, w = desc_a.shape[2:]
        similarity = torch.stack([(desc_a * padded[:, :, r + i:r + i + d, r + j:r + j + h, r + k:r + k + w]).sum(1)
                                  for i, j, k in self.offsets.long().tolist()], dim=1)  # (N, M, d, h, w)
        log_sharpness = (SHARPNESS_RATE * self.sharpness).clamp(-MAX_LOG_SHARPNESS, MAX_LOG_SHARPNESS)
        probability = torch.softmax(INITIAL_SHARPNESS * torch.exp(log_sharpness) * similarity, dim=1)
        shift = torch.einsum("nmdhw,mc->ndhwc", probability, self.offsets) * self.pool
        return shift, probability.pow(2).sum(1)


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
