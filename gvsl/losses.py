"""GVSL's pre-training losses: local NCC, restoration MSE, field smoothness."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NCC_WINDOW = 9
NCC_EPS = 1e-5


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window``^3 box around each voxel, zero outside, as three 1-D passes.

    (N, C, D, H, W) -> same shape. Equal to a dense conv3d with a ones kernel
    and ``window // 2`` zero padding, at 3 * window instead of window^3 taps.
    On the CPU the passes are depthwise convolutions (about 2x faster there than
    average pooling, measured in benchmarks/RESULTS.md); elsewhere average pooling.
    """
    pad = window // 2
    channels = x.shape[1]
    for axis in range(3):
        kernel = [1, 1, 1]
        kernel[axis] = window
        padding = [0, 0, 0]
        padding[axis] = pad
        if x.device.type == "cpu":
            ones = torch.ones(channels, 1, *kernel, dtype=x.dtype)
            x = F.conv3d(x, ones, padding=padding, groups=channels)
        else:
            x = F.avg_pool3d(x, kernel, stride=1, padding=padding, count_include_pad=True) * window
    return x


def local_ncc_loss(warped: torch.Tensor, target: torch.Tensor, window: int = NCC_WINDOW) -> torch.Tensor:
    """1 - mean local squared normalised cross-correlation (window^3 boxes, zero padded).

    cc = cov(I, J)^2 / (var(I) var(J) + 1e-5) with sums (not means) over each
    box, the definition the GVSL paper trained with. MONAI's
    LocalNormalizedCrossCorrelationLoss normalises by the box volume before
    adding its epsilon, so its values differ; hence this implementation.
    Computed in at least float32, also under autocast. Inputs (N, 1, D, H, W).
    """
    dtype = torch.promote_types(warped.dtype, torch.float32)
    with torch.autocast(device_type=warped.device.type, enabled=False):
        i, j = warped.to(dtype), target.to(dtype)
        sums = box_sum(torch.cat([i, j, i * i, j * j, i * j], dim=1), window)
        s_i, s_j, s_ii, s_jj, s_ij = sums.unbind(1)
        n = float(window**3)
        return 1 - squared_ncc(s_i, s_ii, s_ij, s_j, s_jj - s_j * s_j / n, n).mean()


def ncc_cross_and_denominator(s_i: torch.Tensor, s_ii: torch.Tensor, s_ij: torch.Tensor, s_j: torch.Tensor,
                              var_j: torch.Tensor, n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per voxel, cov(I, J) and var(I) var(J) + 1e-5 (summed over boxes of ``n`` voxels), from box sums of I, I^2,
    IJ and J and J's summed variance ``var_j`` (all of one shape): the local squared NCC is cross² / denominator."""
    cross = s_ij - s_i * s_j / n
    return cross, (s_ii - s_i * s_i / n) * var_j + NCC_EPS


def squared_ncc(s_i: torch.Tensor, s_ii: torch.Tensor, s_ij: torch.Tensor, s_j: torch.Tensor, var_j: torch.Tensor,
                n: float) -> torch.Tensor:
    """Local squared NCC per voxel, cov(I, J)^2 / (var(I) var(J) + 1e-5) (``ncc_cross_and_denominator``)."""
    cross, denominator = ncc_cross_and_denominator(s_i, s_ii, s_ij, s_j, var_j, n)
    return cross * cross / denominator


def smoothness_loss(flow: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a (N, 3, D, H, W) field, averaged over the three axes."""
    d = (flow[:, :, 1:] - flow[:, :, :-1]).pow(2).mean()
    h = (flow[:, :, :, 1:] - flow[:, :, :, :-1]).pow(2).mean()
    w = (flow[:, :, :, :, 1:] - flow[:, :, :, :, :-1]).pow(2).mean()
    return (d + h + w) / 3


def restoration_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the restored and the clean volume."""
    return F.mse_loss(restored.float(), target.float())
