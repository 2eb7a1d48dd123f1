"""``gvsl.carry_labels``: label maps carried through a transform by partial volumes, on the real MNI152 tissue maps
(nilearn wheel) at 2 mm: exact under the identity, closer than nearest neighbour to the truth under a sub-voxel
warp, background outside."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl.carry_labels import carry_labels
from gvsl.sample_data import load_mni


@pytest.fixture(scope="module")
def mni():
    return load_mni(2.0)


def tissue_labels(gm: sitk.Image, wm: sitk.Image) -> np.ndarray:
    """0 background, 1 grey matter, 2 white matter: the larger of the two maps where it exceeds 0.5."""
    g, w = sitk.GetArrayFromImage(gm), sitk.GetArrayFromImage(wm)
    return np.where((g > 0.5) & (g >= w), 1, np.where(w > 0.5, 2, 0)).astype(np.uint8)


def label_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


def test_the_identity_gives_the_labels_back(mni):
    labels = label_image(tissue_labels(mni["gm"], mni["wm"]), mni["t1"])
    carried = carry_labels(labels, labels, sitk.Transform())
    assert carried.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(carried), sitk.GetArrayFromImage(labels))


def test_partial_volumes_follow_a_subvoxel_warp_closer_than_nearest_neighbour(mni):
    """The truth: the continuous tissue maps resampled through the transform, then labelled. Nearest neighbour moves
    boundaries by whole voxels; the carried shares place them between voxels."""
    labels = label_image(tissue_labels(mni["gm"], mni["wm"]), mni["t1"])
    transform = sitk.Euler3DTransform(mni["t1"].TransformContinuousIndexToPhysicalPoint(
        [n / 2 for n in mni["t1"].GetSize()]), 0.03, -0.02, 0.04, (0.7, -0.9, 0.5))  # mm: below a 2 mm voxel
    truth = tissue_labels(*(sitk.Resample(mni[name], mni["t1"], transform, sitk.sitkLinear, 0.0)
                            for name in ("gm", "wm")))
    partial = sitk.GetArrayFromImage(carry_labels(labels, mni["t1"], transform))
    nearest = sitk.GetArrayFromImage(sitk.Resample(labels, mni["t1"], transform, sitk.sitkNearestNeighbor, 0))
    assert np.sum(partial != truth) < 0.75 * np.sum(nearest != truth)


def test_outside_the_labels_is_background(mni):
    labels = label_image(np.full(sitk.GetArrayFromImage(mni["t1"]).shape, 7, np.uint16), mni["t1"])
    width_mm = mni["t1"].GetSize()[0] * mni["t1"].GetSpacing()[0]
    carried = sitk.GetArrayFromImage(carry_labels(labels, labels, sitk.TranslationTransform(3, (width_mm / 2, 0, 0))))
    half = carried.shape[2] // 2
    assert np.all(carried[:, :, :half - 1] == 7) and np.all(carried[:, :, half + 1:] == 0)
