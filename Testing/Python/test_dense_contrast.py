"""Dense correspondence contrast: low only when each voxel's feature matches the feature at its known match."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from real_images import mni_block

from gvsl.pretrain.dense_contrast import dense_contrast_loss
from gvsl.pretrain.synthetic import SyntheticPairs

SHAPE = (32, 40, 36)
SHIFT = 3  # voxels along d: A's voxel p matches B's voxel p + SHIFT


def shifted_pairs(mask: bool = True) -> tuple[torch.Tensor, SyntheticPairs]:
    clean_a = torch.from_numpy(mni_block(SHAPE))[None, None]
    target = torch.eye(4)[None].clone()
    target[0, 0, 3] = SHIFT
    return clean_a, SyntheticPairs(clean_a, torch.tensor([mask]), target)


def distinct_features(channels: int = 16) -> torch.Tensor:
    """(1, C, D, H, W) smooth random features: every voxel's differs from those a few voxels away."""
    coarse = torch.randn(1, channels, *(s // 4 for s in SHAPE), generator=torch.Generator().manual_seed(0))
    return F.interpolate(coarse, size=SHAPE, mode="trilinear", align_corners=False)


def test_features_that_follow_the_known_match_score_far_below_collapsed_ones():
    clean_a, pairs = shifted_pairs()
    local_b = distinct_features()
    generator = torch.Generator().manual_seed(1)
    matched = torch.roll(local_b, -SHIFT, dims=2)  # local_a[p] = local_b[p + SHIFT]
    wrong_way = torch.roll(local_b, SHIFT, dims=2)  # local_a[p] = local_b[p - SHIFT]
    collapsed = torch.ones_like(local_b)
    voxels = 128
    loss = {name: float(dense_contrast_loss(a, b, clean_a, pairs, generator, voxels=voxels))
            for name, (a, b) in {"matched": (matched, local_b), "wrong": (wrong_way, local_b),
                                 "collapsed": (collapsed, collapsed)}.items()}
    # nothing tells the voxels apart: chance, log K, K = the drawn voxels whose match lies inside B (most of them)
    assert math.log(0.85 * voxels) < loss["collapsed"] <= math.log(voxels) + 1e-5
    assert loss["matched"] < 0.5 * loss["wrong"]
    assert loss["matched"] < 0.5 * loss["collapsed"]


def test_pairs_that_are_not_synthetic_add_nothing():
    clean_a, pairs = shifted_pairs(mask=False)
    local = distinct_features().requires_grad_(True)
    loss = dense_contrast_loss(local, local, clean_a, pairs, torch.Generator().manual_seed(0))
    assert float(loss) == 0.0
    loss.backward()  # still part of the graph: a batch without synthetic samples trains as usual
