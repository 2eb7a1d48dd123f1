"""Sliding-window prediction of class probabilities on a preprocessed volume (MONAI, Gaussian blending)."""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
from monai.inferers import sliding_window_inference

from gvsl.networks.backbone import SIZE_MULTIPLE
from gvsl.train.device import Precision

FP32 = Precision("fp32", None, False)


def flip_sets(tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes of (N, C, D, H, W) to flip for each pass: none, or all 8 combinations with ``tta``."""
    axes = (2, 3, 4)
    if not tta:
        return [()]
    return [combo for r in range(4) for combo in itertools.combinations(axes, r)]


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, volume: torch.Tensor, window: Sequence[int], *,
                          overlap: float = 0.5, sw_batch_size: int = 2, tta: bool = False,
                          precision: Precision = FP32,
                          device: torch.device | str = "cpu", channels_last: bool = False) -> torch.Tensor:
    """Softmax probabilities of ``model`` over a whole volume.

    Args:
        model: (N, 1, d, h, w) -> (N, C, d, h, w) logits, on ``device``.
        volume: (1, 1, D, H, W) float32 in [0, 1] on the canonical grid (any device; kept where it is and
            windows are moved to ``device``, so a large volume may stay on the CPU).
        window: (d, h, w) window in voxels; along an axis where the volume is smaller it shrinks to the volume
            rounded up to a multiple of 16 (the network pads to that anyway: no computation is wasted).
        overlap: fraction of a window shared with its neighbour per axis, in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: average the predictions of the 8 axis flips (8x the time).
        precision: autocast of the forward pass (probabilities are accumulated in float32).
        channels_last: feed windows in the channels-last-3d layout (for a model converted to it).
    Returns:
        (1, C, D, H, W) float32 probabilities on ``volume``'s device.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    device = torch.device(device)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    window = tuple(min(int(w), -(-int(s) // SIZE_MULTIPLE) * SIZE_MULTIPLE) for w, s in zip(window, volume.shape[2:]))

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        with precision.autocast(device):
            logits = model(windows.contiguous(memory_format=memory_format))
        return torch.softmax(logits.float(), dim=1)

    total = None
    flips = flip_sets(tta)
    for axes in flips:
        flipped = volume.flip(axes) if axes else volume
        probs = sliding_window_inference(flipped, window, sw_batch_size, predictor,
                                         overlap=overlap, mode="gaussian", sw_device=device,
                                         device=volume.device)
        probs = probs.flip(axes) if axes else probs
        total = probs if total is None else total.add_(probs)
    return total / len(flips) if len(flips) > 1 else total
