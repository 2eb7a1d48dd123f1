"""Batched, on-device augmentations for GVSL pre-training (appearance corruptions and spatial transforms)."""
from gvsl.augment.appearance import bezier_intensity_map, corrupt_appearance, inpaint, local_pixel_shuffle
from gvsl.augment.config import AugmentationConfig
from gvsl.augment.pipeline import GVSLAugmentation
from gvsl.augment.spatial import SpatialTransform, affine_voxel_map, elastic_displacement, random_spatial_transform

__all__ = [
    "AugmentationConfig",
    "GVSLAugmentation",
    "SpatialTransform",
    "affine_voxel_map",
    "bezier_intensity_map",
    "corrupt_appearance",
    "elastic_displacement",
    "inpaint",
    "local_pixel_shuffle",
    "random_spatial_transform",
]
