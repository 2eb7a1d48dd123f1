"""Synthetic pairs: A against a copy of itself under a known random affine, a direct lesson for the affine head.

Between two subjects the true correspondence is unknown and the matching loss (NCC) teaches the affine only
slowly. For a copy of A resampled by a known affine T (``B_T(q) = A(T q)``), the answer is known: the network must
sample B_T at ``T⁻¹ p`` for each voxel p of A. A fraction of each batch is such pairs, and the affine head is
supervised there by the mean squared distance, in voxels scaled by half the volume size, between where its affine
sends the volume's corners and where T⁻¹ sends them. Not in the paper (its affine head is taught by NCC alone).
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Optional

import torch

from gvsl.augment.config import AugmentationConfig
from gvsl.augment.draw import uniform
from gvsl.augment.spatial import random_spatial_transform
from gvsl.networks.conventions import affine_voxel_matrix

# The affine part of the paper's spatial augmentation, somewhat narrower (the heads' inter-subject range), no elastic.
SYNTHETIC_AFFINE = AugmentationConfig(rotation_max_rad=math.pi / 12, scale_range=(0.85, 1.15),
                                      translation_fraction=0.1, shear_max_rad=math.pi / 36, elastic_alpha=(0.0, 0.0))


class SyntheticPairs(NamedTuple):
    """``b``: the batch's B with the synthetic samples replaced; ``mask``: (N,) which samples are synthetic;
    ``target``: (N, 4, 4) voxel matrix the network should sample B with (T⁻¹; identity where not synthetic)."""

    b: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor


def make_synthetic_pairs(clean_a: torch.Tensor, b: torch.Tensor, fraction: float,
                         generator: Optional[torch.Generator]) -> SyntheticPairs:
    """Replace each sample's B, with probability ``fraction``, by A resampled under a random affine.

    ``clean_a``, ``b``: (N, 1, D, H, W) on one device; ``generator`` draws everything (reproducible).
    """
    mask = uniform((b.shape[0],), 0.0, 1.0, generator, b.device) < fraction
    transform = random_spatial_transform(b.shape[2:], b.shape[0], generator, SYNTHETIC_AFFINE, b.device)
    target = torch.where(mask.view(-1, 1, 1), torch.linalg.inv(transform.matrix),
                         torch.eye(4, dtype=transform.matrix.dtype, device=b.device))
    if not bool(mask.any()):
        return SyntheticPairs(b, mask, target)
    (warped,) = transform.apply(clean_a)
    return SyntheticPairs(torch.where(mask.view(-1, 1, 1, 1, 1), warped.to(b.dtype), b), mask, target)


def affine_supervision_loss(theta: torch.Tensor, pairs: SyntheticPairs, conventions: str) -> torch.Tensor:
    """Mean squared distance between the predicted and the target position of the volume's 8 corners, in units of
    half the volume size, over the synthetic samples (0 without any)."""
    shape = pairs.b.shape[2:]
    if not bool(pairs.mask.any()):
        return theta.sum() * 0
    predicted = affine_voxel_matrix(theta.float(), shape, conventions)
    corners = torch.tensor(list(itertools.product(*[(0.0, s - 1.0) for s in shape])), device=theta.device)
    corners = torch.cat([corners, torch.ones(8, 1, device=theta.device)], dim=1).T  # (4, 8)
    half = torch.tensor([max(s - 1, 1) / 2 for s in shape], device=theta.device).view(1, 3, 1)
    error = ((predicted @ corners - pairs.target.float() @ corners)[:, :3] / half).pow(2).sum(dim=1).mean(dim=1)
    return error[pairs.mask].mean()
