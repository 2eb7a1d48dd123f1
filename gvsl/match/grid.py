"""Placing two volumes on network grids of one common array shape.

Choice (documented for users): each image is preprocessed exactly as for training (``preprocess_image``: canonical
grid with identity direction in LPS, normalisation to [0, 1]) and then zero-padded symmetrically (value 0 = the
normalised background, as the training crops are padded) to the common network size: per axis the larger of the two
canonical sizes, rounded up to a multiple of 16. Each image keeps its own network grid (its canonical grid plus the
padding, so no second interpolation), centred on its own physical box. There is no sliding window: the affine head
needs global context, so a volume larger than ``max_size_xyz`` at the target spacing is seen whole at a coarser
spacing, the target spacing times one factor for all axes and both images.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.data import Preprocessed, canonical_grid, preprocess_image
from gvsl.match.config import MatchConfig
from gvsl.networks.backbone import SIZE_MULTIPLE


class NetworkInput(NamedTuple):
    """One volume as the network sees it.

    ``image``: float32 in [0, 1] on the network grid (identity direction, LPS, network spacing);
    ``region_index_xyz`` / ``region_size_xyz``: the voxels of ``image`` that hold the volume (the rest is padding);
    ``preprocessed``: the preprocessing result (normalisation, modality) before padding.
    """

    image: sitk.Image
    region_index_xyz: tuple[int, int, int]
    region_size_xyz: tuple[int, int, int]
    preprocessed: Preprocessed

    def region_slices_dhw(self) -> tuple[slice, slice, slice]:
        """Array slices (d, h, w) of the volume's region in ``image``'s array."""
        return tuple(slice(i, i + n) for i, n in zip(reversed(self.region_index_xyz), reversed(self.region_size_xyz)))


def network_spacing(images: Sequence[sitk.Image], target_spacing: Sequence[float],
                    max_size_xyz: Sequence[int]) -> tuple[float, float, float]:
    """The target spacing (mm, x y z), coarsened by one factor until every image's canonical grid fits the cap."""
    target = np.asarray(target_spacing, float)
    cap = np.asarray(max_size_xyz, float)
    factor = 1.0
    for image in images:
        size = np.asarray(canonical_grid(image, tuple(target)).GetSize(), float)
        if np.any(size > cap):
            # size * target is the extent to within half a voxel; the extra voxel keeps the rounded size <= cap.
            factor = max(factor, float(np.max((size + 1) / cap)))
    return tuple(float(s) for s in target * factor)


def network_size(sizes_xyz: Sequence[Sequence[int]], max_size_xyz: Sequence[int]) -> tuple[int, int, int]:
    """Per axis the largest of ``sizes_xyz``, rounded up to a multiple of 16 and capped by ``max_size_xyz``."""
    largest = np.max(np.asarray(sizes_xyz, int), axis=0)
    rounded = -(-largest // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return tuple(int(n) for n in np.minimum(rounded, np.asarray(max_size_xyz, int)))


def pad_to_size(preprocessed: Preprocessed, size_xyz: Sequence[int]) -> NetworkInput:
    """Zero-pad ``preprocessed.image`` symmetrically (extra voxel after) to ``size_xyz``."""
    size = np.asarray(preprocessed.image.GetSize(), int)
    extra = np.asarray(size_xyz, int) - size
    if np.any(extra < 0):
        raise ValueError(f"canonical image {tuple(size)} is larger than the network grid {tuple(size_xyz)}")
    before = extra // 2
    padded = sitk.ConstantPad(preprocessed.image, [int(b) for b in before], [int(a) for a in extra - before], 0.0)
    return NetworkInput(padded, tuple(int(b) for b in before), tuple(int(n) for n in size), preprocessed)


def prepare_network_inputs(fixed: sitk.Image, moving: sitk.Image, fixed_modality: str, moving_modality: str,
                           config: MatchConfig) -> tuple[NetworkInput, NetworkInput]:
    """Preprocess both images as in training and pad them to one network size (see the module doc).

    Raises ValueError naming the image ("fixed image: ...") when one is not a usable 3D volume.
    """
    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, sitk.Image):
            raise ValueError(f"{name} image must be a SimpleITK image, got {type(image).__name__}")
        if image.GetDimension() != 3:
            raise ValueError(f"{name} image is {image.GetDimension()}D: a 3D volume is needed")
    spacing = network_spacing((fixed, moving), config.prepare.target_spacing, config.max_size_xyz)
    prepare = dataclasses.replace(config.prepare, target_spacing=spacing)
    prepared = []
    for name, image, modality in (("fixed", fixed, fixed_modality), ("moving", moving, moving_modality)):
        try:
            prepared.append(preprocess_image(image, modality, prepare))
        except ValueError as exc:
            raise ValueError(f"{name} image: {exc}") from exc
    size = network_size([p.image.GetSize() for p in prepared], config.max_size_xyz)
    fixed_input, moving_input = (pad_to_size(p, size) for p in prepared)
    return fixed_input, moving_input
