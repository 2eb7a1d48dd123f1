"""The refinement's similarity: local squared NCC against one fixed image, its box sums computed once, with box sums
made of shifted additions.

Equal to ``gvsl.losses.local_ncc_loss(warped, fixed, window)`` (the training loss), but cheaper per optimisation
step: the fixed image's sum and variance per box do not change while a level is optimised, so each step box-sums
three images (I, I², IJ) instead of five; and a box sum here is ``window`` shifted additions per axis, whose
gradient is the same box sum (the zero-padded box filter is symmetric). On a 2-core CPU a 3-channel box sum of a
2 mm head (94 x 116 x 98) with its gradient takes 0.11 s this way against 0.42 s through ``gvsl.losses.box_sum``'s
depthwise convolutions, whose backward pass is slower than their forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gvsl.losses import squared_ncc


def shifted_box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window``^3 box around each voxel, zero outside: (N, C, D, H, W) -> same shape, no autograd."""
    pad = window // 2
    for dim in (2, 3, 4):
        size = x.shape[dim]
        padded = F.pad(x, [0, 0] * (4 - dim) + [pad, pad])
        out = padded.narrow(dim, 0, size).clone()
        for shift in range(1, window):
            out += padded.narrow(dim, shift, size)
        x = out
    return x


class BoxSum(torch.autograd.Function):
    """``shifted_box_sum`` with its gradient: the box filter is its own adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, window: int) -> torch.Tensor:
        ctx.window = window
        return shifted_box_sum(x, window)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return shifted_box_sum(grad, ctx.window), None


class FixedImageNCC:
    """``loss(warped)`` = 1 - mean local squared NCC of ``warped`` with ``fixed`` (both (1, 1, D, H, W), float32),
    ``window``^3 boxes, zero padded: ``gvsl.losses.local_ncc_loss(warped, fixed, window)``."""

    def __init__(self, fixed: torch.Tensor, window: int):
        self.fixed = fixed
        self.window = window
        self.n = float(window**3)
        s_j, s_jj = shifted_box_sum(torch.cat([fixed, fixed * fixed], dim=1), window).unbind(1)
        self.s_j = s_j
        self.var_j = s_jj - s_j * s_j / self.n

    def loss(self, warped: torch.Tensor) -> torch.Tensor:
        sums = BoxSum.apply(torch.cat([warped, warped * warped, warped * self.fixed], dim=1), self.window)
        s_i, s_ii, s_ij = sums.unbind(1)
        return 1 - squared_ncc(s_i, s_ii, s_ij, self.s_j, self.var_j, self.n).mean()
