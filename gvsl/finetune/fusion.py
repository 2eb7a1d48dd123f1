"""Fusing label maps carried onto one scan from several labelled cases: a majority vote, and which voxels the carried
maps agree on."""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Label value of voxels whose fused label is not trusted (the carried maps disagree): training counts no loss there.
IGNORE_VALUE = 65535


def vote(label_maps: Sequence[np.ndarray], values: Sequence[int], sigma_voxels: float = 1.0) -> np.ndarray:
    """Fuse label maps of one grid (each (D, H, W) of ``values`` and 0) by majority vote, background included; a tie
    goes to the value whose indicator, smoothed by a Gaussian of ``sigma_voxels`` and averaged over the maps, is
    largest there (the neighbourhood decides where two maps disagree). One map is returned as it is."""
    from scipy import ndimage

    if len(label_maps) == 1:
        return label_maps[0]
    choices = [0, *values]
    tie_break = 0.5 / len(label_maps)  # below one vote: it only orders values with equal votes
    scores = []
    for value in choices:
        share = np.mean([labels == value for labels in label_maps], axis=0, dtype=np.float32)
        scores.append(share + tie_break * ndimage.gaussian_filter(share, sigma_voxels))  # linear: = mean of smoothed
    return np.asarray(choices, dtype=label_maps[0].dtype)[np.argmax(np.stack(scores), axis=0)]


def agreement(label_maps: Sequence[np.ndarray], fused: np.ndarray) -> np.ndarray:
    """Share of ``label_maps`` (each (D, H, W)) that give each voxel the ``fused`` label: float32 (D, H, W) in
    (0, 1]; 1 everywhere for a single map."""
    return np.mean([labels == fused for labels in label_maps], axis=0, dtype=np.float32)


def fuse_with_confidence(label_maps: Sequence[np.ndarray], values: Sequence[int], min_agreement: float
                         ) -> np.ndarray:
    """``vote`` of the maps as uint16, with ``IGNORE_VALUE`` where fewer than ``min_agreement`` of them give the
    voxel its fused label (with one map, nothing is ignored)."""
    fused = vote(label_maps, values).astype(np.uint16)
    fused[agreement(label_maps, fused) < min_agreement] = IGNORE_VALUE
    return fused
