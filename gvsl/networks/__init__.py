"""GVSL network: backbone, Z-matching head, restoration head, and their geometry."""
from gvsl.networks.backbone import DEFAULT_CHANNELS, UNetBackbone
from gvsl.networks.conventions import CONVENTIONS, affine_voxel_matrix, flow_sampled_voxels
from gvsl.networks.gvsl import GVSL, check_volume
from gvsl.networks.warp import sample_voxels, warp_affine, warp_moving

__all__ = [
    "CONVENTIONS",
    "DEFAULT_CHANNELS",
    "GVSL",
    "UNetBackbone",
    "affine_voxel_matrix",
    "check_volume",
    "flow_sampled_voxels",
    "sample_voxels",
    "warp_affine",
    "warp_moving",
]
