"""The GVSL 3D U-Net backbone: global (bottleneck) and local (last decoder) features."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gvsl.networks.blocks import DoubleConv

DEFAULT_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 512, 256, 128, 64, 32)
SIZE_MULTIPLE = 16  # four 2x poolings


class Down(nn.Module):
    """Max-pool by 2, then DoubleConv. Names match the published state dict."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool3d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Trilinear x2 upsampling (align_corners=True), concatenation [skip, up], DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


def check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    """Validate the nine backbone widths (encoder 5, decoder 4)."""
    chs = tuple(int(c) for c in channels)
    if len(chs) != 9 or any(c < 2 for c in chs):
        raise ValueError(f"channels must be nine widths >= 2 (encoder 5, decoder 4), got {channels!r}")
    return chs


def pad_to_multiple(shape_dhw: Sequence[int], multiple: int = SIZE_MULTIPLE) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis (d, h, w) that makes each size a multiple."""
    out = []
    for s in shape_dhw:
        extra = (multiple - s % multiple) % multiple
        out.append((extra // 2, extra - extra // 2))
    return out


class UNetBackbone(nn.Module):
    """3D U-Net of GVSL.

    ``forward(x)`` takes (N, in_channels, D, H, W) of any size; it is zero-padded
    to multiples of 16 (split evenly, extra voxel after) and the local
    features are cropped back. Returns ``(global_features, local_features)``:
    (N, channels[4], D'/16, H'/16, W'/16) on the padded grid and
    (N, channels[8], D, H, W).
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS):
        super().__init__()
        c = check_channels(channels)
        self.channels = c
        self.inc = DoubleConv(in_channels, c[0])
        self.down1 = Down(c[0], c[1])
        self.down2 = Down(c[1], c[2])
        self.down3 = Down(c[2], c[3])
        self.down4 = Down(c[3], c[4])
        self.up1 = Up(c[4] + c[3], c[5])
        self.up2 = Up(c[5] + c[2], c[6])
        self.up3 = Up(c[6] + c[1], c[7])
        self.up4 = Up(c[7] + c[0], c[8])
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape[2:]
        pads = pad_to_multiple(shape)
        if any(p for pair in pads for p in pair):
            # F.pad lists the last axis first.
            x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        crop = tuple(slice(before, before + s) for (before, _), s in zip(pads, shape))
        return x5, y[(slice(None), slice(None), *crop)]
