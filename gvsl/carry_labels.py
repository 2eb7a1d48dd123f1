"""Carrying a label map through a transform onto another grid, by partial volumes rather than nearest neighbour."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def carry_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """``labels`` (integer label map, physical space of its own grid) resampled onto ``reference``'s grid through
    ``transform`` (reference point -> ``labels`` point, LPS mm), with ``labels``' pixel type; 0 outside. Takes one
    linear resampling per label.

    Each label's indicator (background included) is interpolated linearly and every voxel takes the label with the
    largest share: boundaries follow the warp between voxels instead of jumping by whole voxels as nearest
    neighbour does. On real brains carried by ``gvsl match`` this lifts the mean Dice of 14 subcortical structures
    from 0.708 to 0.726 (benchmarks/RESULTS.md, "Carrying labels by partial volumes"). Where the grids coincide
    under the identity the labels come back exactly (a linear interpolation at the nodes is the node's value).
    """
    array = sitk.GetArrayViewFromImage(labels)
    values = np.union1d([0], np.unique(array))  # background first, so that it wins ties and fills the outside
    best_share, best_label = None, None
    for value in values:
        indicator = sitk.GetImageFromArray((array == value).astype(np.float32))
        indicator.CopyInformation(labels)
        share = sitk.GetArrayFromImage(sitk.Resample(indicator, reference, transform, sitk.sitkLinear,
                                                     1.0 if value == 0 else 0.0, sitk.sitkFloat32))
        if best_share is None:
            best_share, best_label = share, np.full(share.shape, value, dtype=array.dtype)
        else:
            larger = share > best_share
            best_share[larger], best_label[larger] = share[larger], value
    out = sitk.GetImageFromArray(best_label)
    out.CopyInformation(reference)
    return out
