"""Real public images for tests: the MNI ICBM152 2009 T1 template shipped inside the nilearn wheel."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def mni_t1(resolution_mm: int = 2) -> np.ndarray:
    """MNI152 2009 T1 template as float32 [k, j, i] array in [0, 1] (nilearn, offline)."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=resolution_mm)
    data = np.asarray(img.get_fdata(), dtype=np.float32)  # [i, j, k]
    data = np.ascontiguousarray(data.transpose(2, 1, 0))
    return data / max(float(data.max()), 1e-6)


def mni_block(shape_dhw: tuple[int, int, int], resolution_mm: int = 2) -> np.ndarray:
    """A centred block of the template of ``shape_dhw`` voxels (k, j, i)."""
    vol = mni_t1(resolution_mm)
    starts = [(s - n) // 2 for s, n in zip(vol.shape, shape_dhw)]
    return vol[tuple(slice(st, st + n) for st, n in zip(starts, shape_dhw))].copy()
