"""Segmenting a scan of a fine-tuning run's own unlabelled collection (``gvsl finetune --unlabelled DIR``).

Such a run keeps, for every scan of DIR, the labelled cases' label maps carried onto it by matching
(``gvsl.finetune.collection``). When the image to segment is one of those scans, the model's probabilities are fused
with those maps: the model counts as one more voter beside the carried maps, each map voting with its class
indicators smoothed by a Gaussian of ``MATCH_SMOOTHING_VOXELS``. Inside a structure the carried maps decide; within
about a voxel of their boundaries, where matching errs most, the model's probabilities do (benchmarks/RESULTS.md,
"The unlabelled collection": the fused map beats both the model and the carried maps alone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.finetune.collection import COLLECTION_DIR, kept_label_maps
from gvsl.io.geometry import grid_differences

#: Gaussian sigma (voxels of the scan) that softens the carried maps' class indicators before the vote
MATCH_SMOOTHING_VOXELS = 0.5


def find_collection_scan(run_dir: str | Path, image: sitk.Image) -> Optional[str]:
    """The name of the scan kept in ``run_dir``'s collection that is ``image`` (the same grid and voxel values,
    whatever file or series it was read from), or None (no collection, or not one of its scans)."""
    folder = Path(run_dir) / COLLECTION_DIR / "scans"
    if not folder.is_dir():
        return None
    values = None
    for path in sorted(folder.glob("*.nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            if grid_differences(reader, image):  # the header alone answers most scans
                continue
            kept = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
        except RuntimeError:  # a damaged kept scan is not this image
            continue
        if values is None:
            values = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
        if np.allclose(kept, values, rtol=1e-5, atol=1e-5):
            return path.name[: -len(".nii.gz")]
    return None


def collection_label_maps(run_dir: str | Path, image: sitk.Image) -> tuple[Optional[str], list[np.ndarray]]:
    """(scan name, the label maps carried onto it: each [k, j, i] of ``image``'s grid) when ``image`` is a scan of
    ``run_dir``'s collection; (None, []) otherwise. Unreadable maps are left out."""
    name = find_collection_scan(run_dir, image)
    if name is None:
        return None, []
    maps = []
    for path in kept_label_maps(Path(run_dir) / COLLECTION_DIR, name):
        try:
            labels = sitk.ReadImage(str(path))
        except RuntimeError:
            continue
        if labels.GetSize() == image.GetSize():
            maps.append(sitk.GetArrayFromImage(labels))
    return (name, maps) if maps else (None, [])


def fuse_with_label_maps(probabilities: np.ndarray, label_maps: Sequence[np.ndarray], values: Sequence[int],
                         sigma_voxels: float = MATCH_SMOOTHING_VOXELS) -> np.ndarray:
    """Class indices (int64 (D, H, W); 0 background, k for ``values[k - 1]``) of the model's probabilities
    ((C, D, H, W), C = len(values) + 1) and the carried label maps (each (D, H, W) of label values) voting together:
    argmax over classes of the probability plus, per map, its class indicator smoothed by a Gaussian of
    ``sigma_voxels``. Values of a map outside ``values`` vote for background."""
    from scipy import ndimage

    if probabilities.shape[0] != len(values) + 1:
        raise ValueError(f"{probabilities.shape[0]} classes of probabilities for {len(values)} label values")
    scores = np.array(probabilities, dtype=np.float32, copy=True)
    lookup = np.zeros(max([0, *values, *(int(m.max()) for m in label_maps)]) + 1, np.int64)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    for labels in label_maps:
        classes = lookup[labels]
        for k in range(scores.shape[0]):
            scores[k] += ndimage.gaussian_filter((classes == k).astype(np.float32), sigma_voxels)
    return scores.argmax(axis=0)
