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
from typing import Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.finetune.collection import COLLECTION_DIR, kept_label_maps
from gvsl.io.geometry import grid_differences
from gvsl.segment.intensity_refinement import refine_by_intensity, refinement_box

#: Gaussian sigma (voxels of the scan) that softens the carried maps' class indicators before the vote
MATCH_SMOOTHING_VOXELS = 0.5
GAUSSIAN_TRUNCATE = 4.0  # the smoothing kernel's radius in sigmas (scipy's default)


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
                         sigma_voxels: float = MATCH_SMOOTHING_VOXELS, intensities: Optional[np.ndarray] = None
                         ) -> np.ndarray:
    """Class indices (int64 (D, H, W); 0 background, k for ``values[k - 1]``) of the model's probabilities
    ((C, D, H, W), C = len(values) + 1) and the carried label maps (each (D, H, W) of label values; none: the
    model alone) voting together: per voxel the first class of the highest ``class_scores``. With the scan's
    ``intensities`` ((D, H, W)), the voxels near the structures are then refined by them
    (``gvsl.segment.intensity_refinement``), the scores being the prior."""
    classes = _running_arg_max(class_scores(probabilities, label_maps, values, sigma_voxels))
    box = None if intensities is None else refinement_box(classes)
    if box is None:
        return classes
    # The scores again, in the box only: grown by the smoothing's radius, whose reflected edges then lie outside it.
    radius = int(GAUSSIAN_TRUNCATE * sigma_voxels + 0.5)
    grown = tuple(slice(max(b.start - radius, 0), min(b.stop + radius, n)) for b, n in zip(box, classes.shape))
    inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))
    scores = np.stack([score[inner] for score in class_scores(probabilities[(slice(None), *grown)],
                                                              [labels[grown] for labels in label_maps], values,
                                                              sigma_voxels)])
    classes[box] = refine_by_intensity(classes[box], scores, intensities[box])
    return classes


def _running_arg_max(scores: Iterator[np.ndarray]) -> np.ndarray:
    """The index of the first highest of ``scores`` (each (D, H, W)) per voxel, as int64: numpy's arg-max along a
    first axis would need them all stacked (a copy)."""
    best = np.asarray(next(scores), np.float32)
    classes = np.zeros(best.shape, np.int64)
    for k, score in enumerate(scores, start=1):
        higher = score > best
        classes[higher] = k
        np.maximum(best, score, out=best)
    return classes


def class_scores(probabilities: np.ndarray, label_maps: Sequence[np.ndarray], values: Sequence[int],
                 sigma_voxels: float = MATCH_SMOOTHING_VOXELS) -> Iterator[np.ndarray]:
    """Each class's (D, H, W) float32 score, class 0 first: its probability plus, per map, its class indicator
    smoothed by a Gaussian of ``sigma_voxels`` (arguments as ``fuse_with_label_maps``). Values of a map outside
    ``values`` vote for background."""
    from scipy import ndimage

    if probabilities.shape[0] != len(values) + 1:
        raise ValueError(f"{probabilities.shape[0]} classes of probabilities for {len(values)} label values")
    lookup = np.zeros(max([0, *values, *(int(m.max()) for m in label_maps)]) + 1, np.int64)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    # A class's smoothed indicator is zero beyond its bounding box grown by the kernel's radius, so each class is
    # smoothed there only (a zero margin of that radius makes the crop's reflected edges the whole volume's zeros);
    # the background's is one minus the others' (the filter is linear and keeps constants).
    radius = int(GAUSSIAN_TRUNCATE * sigma_voxels + 0.5)
    votes: list[list[tuple[tuple[slice, ...], np.ndarray]]] = [[] for _ in range(probabilities.shape[0])]
    background = np.full(probabilities.shape[1:], float(len(label_maps)), np.float32)
    for labels in label_maps:
        classes = lookup[labels]
        for k, box in enumerate(ndimage.find_objects(classes), start=1):
            if box is None:
                continue
            grown = tuple(slice(max(b.start - radius, 0), min(b.stop + radius, n)) for b, n in zip(box, classes.shape))
            smoothed = ndimage.gaussian_filter((classes[grown] == k).astype(np.float32), sigma_voxels,
                                               truncate=GAUSSIAN_TRUNCATE)
            votes[k].append((grown, smoothed))
            background[grown] -= smoothed
    for k, probability in enumerate(probabilities):
        score = background + probability if k == 0 else np.array(probability, np.float32)
        for grown, smoothed in votes[k]:
            score[grown] += smoothed
        yield score
