"""Fine-tuning augmentation: one random affine per patch applied to image (trilinear) and label (nearest), then a
random monotone intensity curve; reuses the pre-training transforms of ``gvsl.augment``."""
from __future__ import annotations

import math

import torch

from gvsl.augment import AugmentationConfig, bezier_intensity_map, random_spatial_transform
from gvsl.augment.draw import coin
from gvsl.networks.warp import sample_voxels

#: Milder than pre-training (labels must stay plausible): +-15 deg, scale 0.85-1.15, shear +-5 deg, no elastic
#: (crops are already placed at random, so no translation either).
SEGMENTATION_SPATIAL = AugmentationConfig(rotation_max_rad=math.pi / 12, scale_range=(0.85, 1.15),
                                          translation_fraction=0.0, shear_max_rad=math.pi / 36,
                                          elastic_alpha=(0.0, 0.0))
INTENSITY_PROB = 0.5


def augment_patches(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator,
                    config: AugmentationConfig = SEGMENTATION_SPATIAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: image (N, 1, D, H, W) float in [0, 1], label (N, 1, D, H, W) int64 class indices.

    Voxels sampled from outside the patch become 0 (image) and background (label). All random numbers come from
    ``generator``, so a seed reproduces the batch. Returns tensors of the same shapes, dtypes and device.
    """
    transform = random_spatial_transform(image.shape[2:], image.shape[0], generator, config, image.device)
    voxels = transform.voxels()
    image = sample_voxels(image, voxels)
    label = sample_voxels(label.to(image.dtype), voxels, mode="nearest").round().long()
    return bezier_intensity_map(image, generator, coin(image.shape[0], INTENSITY_PROB, generator)), label
