"""The refinement's regulariser, exactly and at the cost of its control grid.

The refinement's displacement u is trilinear between the nodes of a control grid, u = (W_d ⊗ W_h ⊗ W_w) c, with
W the per-axis interpolation matrices (``gvsl.match.grid.interpolation_matrix``) and c the node values. Any mean of
squared finite differences of u over the level's voxels is then a quadratic form in c with a separable matrix,
mean |(M_d ⊗ M_h ⊗ M_w) c|² = <c, (G_d ⊗ G_h ⊗ G_w) c> / count, G = Mᵀ M, M = (a difference along the axis) W:
computed from c with three small matrix products per term instead of on every voxel of the level (on the 2 mm head
level, 94 x 116 x 98 voxels against 13 x 15 x 13 nodes, voxel-wise diffusion and bending energies, the bending since
dropped, made each Adam step 2.2 times as long).
"""
from __future__ import annotations

import torch


class InterpolatedDiffusion:
    """Diffusion energy of the field interpolated by ``interpolation_dhw`` ((D, n_d), (H, n_h), (W, n_w) weights)
    from node values (3, n_d, n_h, n_w), in the units of the node values per voxel: ``gvsl.losses.smoothness_loss``
    of the interpolated (1, 3, D, H, W) field."""

    def __init__(self, interpolation_dhw: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        self.grams = []  # per axis, per order of difference (0: none, 1: forward): (n, n) Gram matrix, its rows
        for weights in interpolation_dhw:
            operators = (weights, torch.diff(weights, dim=0))
            self.grams.append([(operator.T @ operator, operator.shape[0]) for operator in operators])

    def mean_square(self, nodes: torch.Tensor, orders_dhw: tuple[int, int, int]) -> torch.Tensor:
        """Mean over the voxels where it is defined and the channels of the squared finite difference of the
        interpolated field of the given order along each axis (d, h, w)."""
        (gd, nd), (gh, nh), (gw, nw) = (self.grams[axis][order] for axis, order in enumerate(orders_dhw))
        if min(nd, nh, nw) <= 0:
            raise ValueError(f"the level is too small for differences of orders {orders_dhw}")
        product = torch.einsum("cijk,lk->cijl", nodes, gw)
        product = torch.einsum("cijl,mj->ciml", product, gh)
        product = torch.einsum("ciml,ni->cnml", product, gd)
        return (nodes * product).sum() / (nodes.shape[0] * nd * nh * nw)

    def diffusion(self, nodes: torch.Tensor) -> torch.Tensor:
        """Mean squared forward difference, averaged over the three axes (``gvsl.losses.smoothness_loss``)."""
        return sum(self.mean_square(nodes, orders) for orders in ((1, 0, 0), (0, 1, 0), (0, 0, 1))) / 3
