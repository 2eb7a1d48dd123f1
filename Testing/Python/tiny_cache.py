"""A tiny prepared cache for tests of the training mechanics (resume, stop, DDP), where image content is irrelevant."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter


def make_tiny_cache(root: Path) -> Path:
    """Prepare three smooth random MR-like volumes (40 x 44 x 36 voxels of 1 mm) into ``root/cache``."""
    from gvsl.data import prepare_cache

    (root / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        image = sitk.GetImageFromArray(gaussian_filter(rng.random((40, 44, 36)), 3).astype(np.float32) * 1000)
        sitk.WriteImage(image, str(root / "volumes" / f"vol{i}.nii.gz"))
    prepare_cache(root / "volumes", root / "cache", progress=False)
    return root / "cache"
