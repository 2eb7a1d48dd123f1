"""Sliding-window prediction of class probabilities on a preprocessed volume (Gaussian blending).

Our own loop rather than MONAI's ``sliding_window_inference``: importing MONAI costs ``gvsl segment`` 2-4 s of its
5 s budget on a 2-core CPU (benchmarks/RESULTS.md), and the loop is a few lines.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch

from gvsl.train.device import Precision

FP32 = Precision("fp32", None, False)
GAUSSIAN_SIGMA_FRACTION = 0.125  # sigma of the blending weight per axis, as a fraction of the window (as MONAI)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """First voxel of each window along one axis of ``size`` voxels: every ``window * (1 - overlap)`` voxels (at
    least 1), the last window flush with the end; one window at 0 when ``window >= size``."""
    if window >= size:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    return [*range(0, size - window, step), size - window]


def blending_weights(window: Sequence[int]) -> torch.Tensor:
    """(d, h, w) float32 Gaussian weights centred on the window, sigma ``GAUSSIAN_SIGMA_FRACTION`` of its size per
    axis, 1 at the centre: a window's prediction counts less towards its edges, where it sees least context."""
    weights = torch.ones((), dtype=torch.float32)
    for n in window:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        weights = weights[..., None] * torch.exp(-0.5 * (x / (GAUSSIAN_SIGMA_FRACTION * n)) ** 2)
    return weights


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, volume: torch.Tensor, window: Sequence[int], *,
                          overlap: float = 0.5, sw_batch_size: int = 2, precision: Precision = FP32,
                          device: torch.device | str = "cpu", channels_last: bool = False) -> torch.Tensor:
    """Softmax probabilities of ``model`` over a whole volume.

    Args:
        model: (N, 1, d, h, w) -> (N, C, d, h, w) logits, on ``device``; any window size (the backbone pads to
            multiples of 16 itself).
        volume: (1, 1, D, H, W) float32 in [0, 1] on the canonical grid (any device; kept where it is and
            windows are moved to ``device``, so a large volume may stay on the CPU).
        window: (d, h, w) window in voxels; along an axis where the volume is smaller, the whole axis.
        overlap: fraction of a window shared with its neighbour per axis, in [0, 1).
        sw_batch_size: windows per forward pass.
        precision: autocast of the forward pass (probabilities are accumulated in float32).
        channels_last: feed windows in the channels-last-3d layout (for a model converted to it).
    Returns:
        (1, C, D, H, W) float32 probabilities on ``volume``'s device: per voxel, the Gaussian-weighted mean of the
        windows that hold it.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be 1 or more, got {sw_batch_size}")
    device = torch.device(device)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    shape = volume.shape[2:]
    window = tuple(min(int(w), int(s)) for w, s in zip(window, shape))
    weights = blending_weights(window).to(volume.device)
    weights_on_device = weights.to(device)
    boxes = [tuple(slice(c, c + w) for c, w in zip(corner, window))
             for corner in itertools.product(*(window_starts(s, w, overlap) for s, w in zip(shape, window)))]
    total, weight_sum = None, torch.zeros(shape, dtype=torch.float32, device=volume.device)
    for first in range(0, len(boxes), sw_batch_size):
        batch = boxes[first:first + sw_batch_size]
        windows = torch.cat([volume[(slice(None), slice(None), *box)] for box in batch]).to(device)
        with precision.autocast(device):
            logits = model(windows.contiguous(memory_format=memory_format))
        # weighted as one batch, in the volume's layout: per window, strided adds cost a tenth of the prediction
        weighted = (torch.softmax(logits.float(), dim=1) * weights_on_device).contiguous().to(volume.device)
        if total is None:
            total = torch.zeros((1, weighted.shape[1], *shape), dtype=torch.float32, device=volume.device)
        for box, p in zip(batch, weighted):
            total[(0, slice(None), *box)] += p
            weight_sum[box] += weights
    return total / weight_sum
