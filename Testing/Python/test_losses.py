"""Losses: separable local NCC equals the dense 9^3 definition; smoothness and MSE values."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from real_images import mni_block

from gvsl.losses import box_sum, local_ncc_loss, restoration_loss, smoothness_loss


def dense_ncc_loss(i: torch.Tensor, j: torch.Tensor, window: int = 9) -> torch.Tensor:
    """The GVSL paper's local NCC written plainly: dense window^3 sums, zero padding."""
    ones = torch.ones(1, 1, window, window, window, dtype=i.dtype)
    pad = window // 2
    s_i, s_j, s_ii, s_jj, s_ij = (F.conv3d(t, ones, padding=pad) for t in (i, j, i * i, j * j, i * j))
    n = window**3
    mean_i, mean_j = s_i / n, s_j / n
    cross = s_ij - mean_j * s_i - mean_i * s_j + mean_i * mean_j * n
    var_i = s_ii - 2 * mean_i * s_i + mean_i * mean_i * n
    var_j = s_jj - 2 * mean_j * s_j + mean_j * mean_j * n
    return 1 - (cross * cross / (var_i * var_j + 1e-5)).mean()


def real_pair():
    a = torch.from_numpy(mni_block((24, 40, 32)))[None, None]
    b = torch.from_numpy(mni_block((24, 40, 32))).roll(3, dims=1)[None, None] ** 1.5
    return a, b


def test_box_sum_equals_dense_convolution():
    a, _ = real_pair()
    dense = F.conv3d(a.double(), torch.ones(1, 1, 9, 9, 9, dtype=torch.float64), padding=4)
    assert torch.allclose(box_sum(a.double(), 9), dense, atol=1e-9)


def test_local_ncc_equals_dense_definition():
    a, b = real_pair()
    for window in (9, 5):
        expected = dense_ncc_loss(a.double(), b.double(), window)
        assert abs(local_ncc_loss(b, a, window).item() - expected.item()) < 1e-5
    assert abs(local_ncc_loss(a, a).item()) < 1e-3  # identical images correlate perfectly (up to the epsilon)
    assert local_ncc_loss(b, a).item() > 0.05


def test_local_ncc_runs_in_float32_under_low_precision_input():
    a, b = real_pair()
    value = local_ncc_loss(b.bfloat16(), a.bfloat16())
    assert value.dtype == torch.float32
    assert abs(value.item() - local_ncc_loss(b, a).item()) < 2e-2


def test_smoothness_of_known_fields():
    flow = torch.zeros(1, 3, 8, 10, 12)
    assert smoothness_loss(flow + 2.5).item() == 0
    ramp = torch.arange(12, dtype=torch.float32).view(1, 1, 1, 1, 12).expand(1, 3, 8, 10, 12) * 0.5
    # only the w differences are non-zero: 0.5^2, averaged over the three axes
    assert abs(smoothness_loss(ramp).item() - 0.25 / 3) < 1e-7


def test_restoration_loss_is_mse():
    a, b = real_pair()
    assert torch.isclose(restoration_loss(a, b), ((a - b) ** 2).mean())
