"""Refinement of a segmentation by the scan's own intensities (``gvsl.segment.intensity_refinement``): where the model
and the carried labels disagree, the intensities decide; nothing moves far from the structures; the refinement in the
structures' box equals the whole volume's; scans it cannot learn from are left as they are.

Real data: the MNI152 2009 T1 template at 2 mm with its own grey and white matter maps (nilearn wheel).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from gvsl.finetune.heldout import class_dice
from gvsl.sample_data import load_mni
from gvsl.segment.collection_matches import class_scores, fuse_with_label_maps
from gvsl.segment.intensity_refinement import MARGIN_VOXELS, refine_by_intensity

VALUES = [1, 2]  # grey matter, white matter


@pytest.fixture(scope="module")
def mni() -> dict[str, np.ndarray]:
    """The template's intensities and its tissue classes (1 grey, 2 white matter where that map exceeds one half)."""
    images = {k: sitk.GetArrayFromImage(v) for k, v in load_mni(2.0).items()}
    gm, wm = images["gm"], images["wm"]
    truth = np.select([(gm > 0.5) & (gm >= wm), (wm > 0.5) & (wm > gm)], VALUES, 0).astype(np.uint16)
    return {"t1": images["t1"], "truth": truth}


def _model_probabilities(classes: np.ndarray, sure: float = 0.9, n_classes: int = 3) -> np.ndarray:
    """(n_classes, D, H, W) probabilities of a model that gives ``classes`` (0 ... n_classes - 1) with probability
    ``sure``."""
    probabilities = np.full((n_classes, *classes.shape), (1 - sure) / (n_classes - 1), np.float32)
    for k in range(n_classes):
        probabilities[k][classes == k] = sure
    return probabilities


@pytest.mark.parametrize("axis", [0, 2])
def test_where_the_model_and_the_matches_disagree_the_intensities_decide(mni, axis):
    """The carried map lies one voxel off the truth one way, the model one voxel the other way: fused, each boundary
    voxel is a coin toss between them (Dice 0.92); the template's own intensities put them back (measured 0.96-0.97).
    Voxels further than MARGIN_VOXELS from every structure keep their class."""
    truth, t1 = mni["truth"], mni["t1"]
    carried, model = np.roll(truth, 1, axis=axis), np.roll(truth, -1, axis=axis)
    probabilities = _model_probabilities(model)
    fused = fuse_with_label_maps(probabilities, [carried], VALUES)
    refined = fuse_with_label_maps(probabilities, [carried], VALUES, intensities=t1)
    before, after = class_dice(fused, truth, VALUES), class_dice(refined, truth, VALUES)
    assert min(after) > 0.95 and min(np.subtract(after, before)) > 0.03, (before, after)
    far = ~ndimage.binary_dilation(fused > 0, iterations=MARGIN_VOXELS)
    np.testing.assert_array_equal(refined[far], fused[far])


@pytest.mark.parametrize("axis", [0, 2])
def test_a_small_structure_of_its_surroundings_intensity_keeps_the_priors_boundary(mni, monkeypatch, axis):
    """A ball of 33 voxels deep in the white matter, of its intensity; the model and the carried map each put it one
    voxel off. Its intensities say nothing, so the refinement must keep the fused ball (Dice 0.86). Without the two
    safeguards (histograms drawn towards everyone's, a change only where the intensity doubles the likelihood) its
    histogram of a few sure voxels shrank it (measured 0.74-0.75)."""
    from gvsl.segment import intensity_refinement

    depth = ndimage.distance_transform_edt(mni["truth"] == 2)
    centre = np.unravel_index(np.argmax(depth), depth.shape)
    ball = (np.sum([(i - c) ** 2 for i, c in zip(np.indices(depth.shape), centre)], axis=0) <= 4).astype(np.uint16)
    probabilities = _model_probabilities(np.roll(ball, -1, axis=axis), sure=0.95, n_classes=2)
    carried = np.roll(ball, 1, axis=axis)

    def dice() -> float:
        return class_dice(fuse_with_label_maps(probabilities, [carried], [1], intensities=mni["t1"]), ball, [1])[0]

    fused = class_dice(fuse_with_label_maps(probabilities, [carried], [1]), ball, [1])[0]
    assert ball.sum() == 33 and dice() == pytest.approx(fused)
    monkeypatch.setattr(intensity_refinement, "PRIOR_VOXELS", 0.0)
    monkeypatch.setattr(intensity_refinement, "LIKELIHOOD_RATIO_TO_CHANGE", 1.0)
    assert dice() < fused - 0.05


def test_the_refinement_in_the_structures_box_equals_the_whole_volumes(mni):
    """``fuse_with_label_maps`` refines in the structures' box, its scores recomputed there: the same classes as
    refining the whole volume's scores, with a map cut so that structures touch the volume's faces, and two maps."""
    truth = mni["truth"][20:70, 30:, :-25].copy()
    t1 = mni["t1"][20:70, 30:, :-25].copy()
    maps = [np.roll(truth, 1, axis=1), np.roll(truth, -1, axis=2)]
    probabilities = _model_probabilities(np.roll(truth, 1, axis=0).astype(np.int64), sure=0.7)
    whole = np.stack(list(class_scores(probabilities, maps, VALUES)))
    expected = refine_by_intensity(whole.argmax(axis=0), whole, t1)
    assert (truth[0] > 0).any() and (truth[:, :, -1] > 0).any()
    assert not np.array_equal(expected, whole.argmax(axis=0))
    np.testing.assert_array_equal(fuse_with_label_maps(probabilities, maps, VALUES, intensities=t1), expected)


def test_what_it_cannot_learn_from_is_left_as_it_is(mni):
    """A constant scan, a segmentation with nothing labelled, and non-finite intensities keep their classes; the
    intensities must have the classes' shape."""
    truth = mni["truth"][30:60, 40:80, 30:70].astype(np.int64)
    scores = _model_probabilities(truth)
    np.testing.assert_array_equal(refine_by_intensity(truth, scores, np.full(truth.shape, 7.0, np.float32)), truth)
    empty = np.zeros_like(truth)
    t1 = mni["t1"][30:60, 40:80, 30:70].copy()
    np.testing.assert_array_equal(refine_by_intensity(empty, _model_probabilities(empty), t1), empty)
    disagreeing = np.stack(list(class_scores(_model_probabilities(np.roll(truth, 1, axis=0)),
                                             [np.roll(truth, -1, axis=0)], VALUES)))
    fused = disagreeing.argmax(axis=0)
    t1[::2] = np.nan
    refined = refine_by_intensity(fused, disagreeing, t1)
    np.testing.assert_array_equal(refined[::2], fused[::2])
    assert not np.array_equal(refined[1::2], fused[1::2])
    with pytest.raises(ValueError, match="intensities"):
        refine_by_intensity(truth, scores, t1[:-1])


def test_gvsl_segment_refines_unless_told_not_to(mni, tmp_path, monkeypatch):
    """The command passes the refinement on by default and off with ``--no-intensity``."""
    from gvsl.cli import main
    from gvsl.commands import segment as segment_command
    from gvsl.labels import make_label_table

    asked = []

    def segment_image(image, model, **options):
        asked.append(options["intensity_refinement"])
        label = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        label.CopyInformation(image)
        return label, make_label_table([1], {1: "grey matter"})

    monkeypatch.setattr(segment_command, "segment_image", segment_image)
    sitk.WriteImage(sitk.GetImageFromArray(mni["t1"]), str(tmp_path / "t1.nii.gz"))
    for extra in ((), ("--no-intensity",)):
        assert main(["segment", str(tmp_path / "t1.nii.gz"), "--model", str(tmp_path / "run"), "--out",
                     str(tmp_path / "labels.nii.gz"), "--device", "cpu", *extra]) == 0
    assert asked == [True, False]
