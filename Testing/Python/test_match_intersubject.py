"""The arithmetic of benchmarks/match_intersubject.py (and the scores it shares with match_accuracy.py) on cases
with a known answer: Dice, label carrying, folding, the rows' means, the check cases' truth."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import match_intersubject as harness  # noqa: E402
import match_methods as methods  # noqa: E402


def label_image(array: np.ndarray, spacing: float = 2.0) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing([spacing] * 3)
    return image


def test_dice_per_label_on_known_overlaps():
    a = np.zeros((4, 4, 4))
    b = np.zeros((4, 4, 4))
    a[:2] = 1  # 32 voxels
    b[1:3] = 1  # 32 voxels, 16 shared
    a[3, 0, 0] = 2
    dice = methods.dice_per_label(label_image(a), label_image(b), [1, 2, 3])
    assert dice == {1: pytest.approx(0.5), 2: 0.0, 3: 1.0}


def test_carry_labels_through_a_known_translation():
    labels = np.zeros((6, 6, 6))
    labels[2, 2, 2] = 5
    moving = label_image(labels)
    fixed = label_image(np.zeros((6, 6, 6)))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    assert np.array_equal(sitk.GetArrayFromImage(methods.carry_labels(moving, fixed, identity)), labels)
    # fixed x -> moving x + (2, 0, 0) mm: the fixed voxel one step before along x (array axis 2) sees the label
    carried = sitk.GetArrayFromImage(methods.carry_labels(moving, fixed, sitk.TranslationTransform(3, (2.0, 0, 0))))
    assert carried[2, 2, 1] == 5 and np.count_nonzero(carried) == 1


def test_folding_percent_of_a_field_that_folds_by_construction():
    grid = label_image(np.zeros((10, 10, 10)), spacing=1.0)
    x = np.arange(10, dtype=float)
    u = np.zeros((10, 10, 10, 3))
    # u_x falls by 2 mm per mm on the slab x in [3, 6]: by central differences d(x + u_x)/dx is -1 at x = 4, 5 and
    # 0 at the slab's edges x = 3, 6 (half slope, half flat), 1 elsewhere: 4 of 10 columns fold, i.e. 40 %.
    slab = (x >= 3) & (x <= 6)
    u[..., 0] = np.where(slab, -2 * (x - 3), np.where(x > 6, -6.0, 0.0))[None, None, :]
    field = sitk.GetImageFromArray(u, isVector=True)
    field.CopyInformation(grid)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    assert methods.folding_percent(transform, grid) == pytest.approx(40.0)
    assert methods.folding_percent(sitk.Transform(3, sitk.sitkIdentity), grid) == 0.0
    flip = sitk.AffineTransform(3)
    flip.SetMatrix((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert methods.folding_percent(flip, grid) == 100.0


def test_rows_average_structures_then_pairs():
    per_case = [{"dice": {1: 1.0, 2: 0.5, 3: 0.0}, "folding_percent": 0.2, "seconds": 1.0},
                {"dice": {1: 0.5, 2: 0.5}, "folding_percent": 0.0, "seconds": 3.0}]
    row = harness.dice_row(per_case, {"all": {1, 2, 3}, "one": {1}})
    assert row["pair_dice_all"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert row["dice_one"] == pytest.approx(0.75)
    assert row["dice_per_structure"] == {"1": 0.75, "2": 0.5, "3": 0.0}
    assert (row["folding_percent"], row["folding_percent_max"], row["seconds_per_pair"]) == (0.1, 0.2, 2.0)


def test_check_cases_truth_self_pair_and_known_shift(tmp_path):
    """On the check cases, the identity is the no-registration row and gives Dice 1 and no error on the self-pair;
    on the shifted copy the true map x -> x + shift gives Dice 1 and no error, the identity neither."""
    self_pair, shifted = harness.check_cases(tmp_path, 4.0)
    identity = harness.Outcome(sitk.Transform(3, sitk.sitkIdentity), None)
    truth = harness.Outcome(sitk.TranslationTransform(3, harness.KNOWN_SHIFT_MM), None)
    unregistered = harness.no_registration(self_pair, tmp_path)
    for outcome in (identity, unregistered):
        scores = harness.score(self_pair, outcome, 200)
        assert min(scores["dice"].values()) == 1.0 and scores["errors_mm"].max() == 0.0
    right, wrong = (harness.score(shifted, outcome, 200) for outcome in (truth, identity))
    assert min(right["dice"].values()) == 1.0 and right["errors_mm"].max() < 1e-9
    assert wrong["errors_mm"].mean() == pytest.approx(np.linalg.norm(harness.KNOWN_SHIFT_MM))
    assert np.mean(list(wrong["dice"].values())) < 0.5
