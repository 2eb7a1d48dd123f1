"""Quality figures of a match: local NCC before/after, folding, displacement size."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.losses import local_ncc_loss


def local_ncc_similarity(image: torch.Tensor, target: torch.Tensor, window: int) -> float:
    """Mean local squared NCC in [0, 1] (``1 - local_ncc_loss``, the training loss's similarity; window^3 boxes)."""
    return float(1 - local_ncc_loss(image, target, window))


def nonpositive_jacobian_percent(displacement_mm: sitk.Image, affine: sitk.AffineTransform,
                                 region: tuple[slice, slice, slice]) -> float:
    """Percentage of voxels of ``region`` (array slices d, h, w) where the map x -> affine(x + u(x)) folds.

    The map's Jacobian determinant is det(affine matrix) * det(I + grad u), the latter from SimpleITK's
    ``DisplacementFieldJacobianDeterminant`` (central differences in mm) on the displacement grid.
    """
    # A copy (GetArrayFromImage): a view of the temporary determinant image would be read after its buffer is freed.
    det_field = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(displacement_mm))[region]
    det = det_field * np.linalg.det(np.asarray(affine.GetMatrix()).reshape(3, 3))
    return float(100.0 * np.count_nonzero(det <= 0) / max(det.size, 1))


def displacement_norms_mm(displacement_mm_lps: sitk.Image) -> np.ndarray:
    """|T(x) - x| in mm at every voxel of a 3-component displacement image."""
    return np.linalg.norm(sitk.GetArrayViewFromImage(displacement_mm_lps), axis=-1)


def match_metrics(fixed_network: torch.Tensor, moving_network: torch.Tensor, warped_network: torch.Tensor,
                  region: tuple[slice, slice, slice], displacement_mm: sitk.Image, affine: sitk.AffineTransform,
                  displacement_mm_lps: sitk.Image, ncc_window: int) -> dict[str, float]:
    """The metrics of ``MatchResult``.

    ``ncc_before`` / ``ncc_after``: local squared NCC of the moving network image / the network's warped output with
    the fixed network image, over ``region`` (the fixed volume's part of the fixed network grid, padding excluded);
    ``nonpositive_jacobian_percent``: folding of the full map over the same region; ``displacement_mean_mm`` /
    ``displacement_max_mm``: |T(x) - x| (affine included) over every voxel of the fixed image.
    Tensors: (1, 1, D, H, W) on the fixed network grid.
    """
    crop = (slice(None), slice(None), *region)
    norms = displacement_norms_mm(displacement_mm_lps)
    return {
        "ncc_before": local_ncc_similarity(moving_network[crop], fixed_network[crop], ncc_window),
        "ncc_after": local_ncc_similarity(warped_network[crop], fixed_network[crop], ncc_window),
        "nonpositive_jacobian_percent": nonpositive_jacobian_percent(displacement_mm, affine, region),
        "displacement_mean_mm": float(norms.mean()),
        "displacement_max_mm": float(norms.max()),
    }
