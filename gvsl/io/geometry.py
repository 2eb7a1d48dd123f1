"""Whether two images share one voxel grid (size, spacing, origin, direction), and how they differ if not."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Tolerances: spacing and direction are relative-ish, origin in mm (DICOM and NIfTI round positions differently).
_TOLERANCES = (("Spacing", 1e-4), ("Origin", 1e-3), ("Direction", 1e-4))


def grid_differences(a: sitk.Image, b: sitk.Image) -> list[str]:
    """How the grid of ``b`` differs from the grid of ``a`` ("size (…) vs (…)", "origin … vs …"); empty if the
    two share size, spacing, origin and direction."""
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for what, tolerance in _TOLERANCES:
        x, y = (np.asarray(getattr(image, f"Get{what}")()) for image in (a, b))
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=tolerance):
            problems.append(f"{what.lower()} {tuple(np.round(x, 4))} vs {tuple(np.round(y, 4))}")
    return problems
