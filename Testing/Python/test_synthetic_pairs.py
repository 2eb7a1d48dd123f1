"""Synthetic pairs (A against a copy of itself under a known affine): the copy, its target, the supervision loss."""
from __future__ import annotations

import torch
from real_images import mni_block

from gvsl.networks import warp_affine
from gvsl.pretrain.synthetic import affine_supervision_loss, make_synthetic_pairs


def theta_of(matrix: torch.Tensor) -> torch.Tensor:
    """[R | t] ("corrected" convention, q = R (p - c) + c + t) of (N, 4, 4) voxel matrices on a 32x40x36 grid."""
    centre = (torch.tensor([32.0, 40.0, 36.0]) - 1) / 2
    linear = matrix[:, :3, :3]
    translation = matrix[:, :3, 3] - centre + linear @ centre
    return torch.cat([linear, translation.unsqueeze(-1)], dim=-1)


def test_the_target_affine_brings_the_copy_back_onto_a():
    a = torch.from_numpy(mni_block((32, 40, 36)))[None, None].repeat(2, 1, 1, 1, 1)
    b = torch.rand_like(a)
    pairs = make_synthetic_pairs(a, b, 1.0, torch.Generator().manual_seed(0))
    assert bool(pairs.mask.all()) and not torch.allclose(pairs.b, a, atol=0.05)
    theta = theta_of(pairs.target)
    back = warp_affine(pairs.b, theta, "corrected")
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8), slice(8, -8))
    moved = (pairs.b - a)[interior].abs().mean()
    assert (back - a)[interior].abs().mean() < 0.3 * moved  # not exact: two trilinear resamplings, some of it outside
    assert float(affine_supervision_loss(theta, pairs, "corrected")) < 1e-10
    identity = torch.eye(3, 4).expand(2, 3, 4)
    assert float(affine_supervision_loss(identity, pairs, "corrected")) > 1e-3


def test_without_synthetic_samples_nothing_changes():
    a = torch.from_numpy(mni_block((32, 40, 36)))[None, None]
    b = torch.rand_like(a)
    pairs = make_synthetic_pairs(a, b, 0.0, torch.Generator().manual_seed(0))
    assert not bool(pairs.mask.any()) and torch.equal(pairs.b, b)
    theta = torch.eye(3, 4)[None].requires_grad_(True)
    loss = affine_supervision_loss(theta, pairs, "corrected")
    assert float(loss.detach()) == 0.0
    loss.backward()  # part of the graph, so a mixed batch's step runs the same code
