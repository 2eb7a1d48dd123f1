"""Building blocks shared by the backbone and the heads."""
from __future__ import annotations

import math

from torch import nn


def group_count(channels: int, per_group: int = 8) -> int:
    """GroupNorm groups: ``channels // per_group`` as in GVSL, reduced to a divisor (at least 1)."""
    return max(1, math.gcd(channels, channels // per_group))


class DoubleConv(nn.Module):
    """(Conv3d k3 -> GroupNorm(C/8) -> LeakyReLU(0.2)) twice; keeps the spatial size.

    Input (N, in_channels, D, H, W) -> output (N, out_channels, D, H, W).
    The attribute name ``double_conv`` matches the published state dict.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        groups = group_count(out_channels)
        self.double_conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.LeakyReLU(0.2),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x):
        return self.double_conv(x)
