"""The initial alignment: how two volumes are put in one frame before the network sees them.

One rule for training pairs (``gvsl.data.pairs``) and for matching (``gvsl.match.frame``), so the network is asked
at match time exactly what it learned:

- ``"centres-of-mass"``: the moving volume is translated so that its intensity-weighted centre lands on the fixed
  volume's (ITK's ``CenteredTransformInitializer`` in MOMENTS mode, ANTs' default initial transform), computed on
  the preprocessed values in [0, 1] (background 0), so CT and MR are treated alike;
- ``"physical"``: no change; right when both scans share one physical frame (the same patient in one session,
  follow-up scans already in one frame, the sample heads).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

INITIAL_ALIGNMENTS: tuple[str, ...] = ("centres-of-mass", "physical")


def check_initial_alignment(method: str) -> str:
    if method not in INITIAL_ALIGNMENTS:
        raise ValueError(f"initial alignment must be one of {', '.join(INITIAL_ALIGNMENTS)}, got {method!r}")
    return method


def centre_of_mass_mm(values_dhw: np.ndarray, spacing_xyz: Sequence[float], origin_xyz: Sequence[float]
                      ) -> np.ndarray:
    """Intensity-weighted centre (x, y, z) in LPS mm of a non-negative (D, H, W) array on an identity-direction
    grid; the grid's centre when the array is all zero."""
    values = np.asarray(values_dhw)
    marginals = [values.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.float64) for axis in range(3)]
    total = marginals[0].sum()
    index_dhw = [float((m * np.arange(m.size)).sum() / total) if total > 0 else (m.size - 1) / 2 for m in marginals]
    return np.asarray(origin_xyz, float) + np.asarray(spacing_xyz, float) * np.asarray(index_dhw[::-1])


def initial_shift_mm(fixed_centre_mm: np.ndarray, moving_centre_mm: np.ndarray, method: str) -> np.ndarray:
    """The translation (x, y, z mm, LPS) taking a fixed point to its initial moving point: ``p -> p + shift``."""
    check_initial_alignment(method)
    if method == "physical":
        return np.zeros(3)
    return np.asarray(moving_centre_mm, float) - np.asarray(fixed_centre_mm, float)
