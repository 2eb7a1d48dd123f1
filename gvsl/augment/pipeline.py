"""The GVSL pre-training augmentation: corrupt a copy of A, then transform A, A' and B alike."""
from __future__ import annotations

import torch

from gvsl.augment.appearance import corrupt_appearance
from gvsl.augment.config import AugmentationConfig
from gvsl.augment.spatial import random_spatial_transform


class GVSLAugmentation:
    """Batched, on-device augmentation of a pair (A, B) for GVSL pre-training.

    Each sample of the batch gets its own corruption and spatial transform;
    A, A' and B of one sample share the transform, so A' differs from A by
    the appearance corruption only. All random numbers come from the
    ``generator`` passed to each call: the same seed gives the same output.
    """

    def __init__(self, config: AugmentationConfig | None = None) -> None:
        self.config = config or AugmentationConfig()

    def __call__(self, a: torch.Tensor, b: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Args:
            a, b: (N, 1, D, H, W) float volumes with values in [0, 1], same shape and device.
            generator: source of all random numbers (any device); ``None`` uses torch's default generator.
        Returns:
            (a, a_corrupted, b), each (N, 1, D, H, W) on the input's device.
        """
        if a.dim() != 5 or a.shape != b.shape:
            raise ValueError(f"a and b must be (N, C, D, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        transform = random_spatial_transform(a.shape[2:], a.shape[0], generator, self.config, a.device)
        a_corrupted = corrupt_appearance(a, generator, self.config)
        return transform.apply(a, a_corrupted, b)
