"""DICOM SEG output: ``gvsl segment DICOM_FOLDER --dicom-seg SEG.dcm`` and ``gvsl.segment.dicom_seg``, read back with
highdicom (and checked by ``dciodvfy`` from dicom3tools where it is installed); terminology in label tables.

The source series is the real MNI152 T1 template (nilearn wheel) written as an oblique, anisotropic MR series with
pydicom (``gvsl.sample_data.write_dicom_series``); the label maps are its real grey/white matter maps.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from untrained_models import write_untrained_segmentation_model

from gvsl.cli import main
from gvsl.io import dicom_series_files, read_image
from gvsl.labels import GENERIC_CATEGORY, GENERIC_TYPE, check_label_table, complete_label_table, make_label_table
from gvsl.sample_data import TISSUE_TERMINOLOGY, TISSUES, load_mni, tissue_labels, write_dicom_series
from gvsl.segment.dicom_seg import slice_indices, write_dicom_seg

hd = pytest.importorskip("highdicom", reason="DICOM SEG export needs highdicom (pip install 'gvsl[dicom-seg]')")

WIDTHS = (4, 4, 8, 8, 8, 8, 8, 4, 4)
# Grey matter with its SNOMED CT codes, white matter (as 4) without codes, and an entry the maps do not contain.
TABLE = make_label_table([1, 4, 7], {1: TISSUES[1], 4: TISSUES[2], 7: "lesion"}, terminology={1: TISSUE_TERMINOLOGY[1]})


@pytest.fixture(scope="module")
def mni():
    return load_mni(4.0)


@pytest.fixture(scope="module")
def series(mni, tmp_path_factory):
    """A folder holding one oblique MR series (22 slices of 40 x 34 voxels, 4.5 x 4 x 6 mm) of the T1 template."""
    direction = sitk.Euler3DTransform((0, 0, 0), 0.25, -0.1, 0.15).GetMatrix()
    grid = sitk.Image([40, 34, 22], sitk.sitkFloat32)
    grid.SetSpacing((4.5, 4.0, 6.0))
    grid.SetDirection(direction)
    centre = np.asarray(mni["t1"].TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in mni["t1"].GetSize()]))
    grid.SetOrigin(tuple(centre - np.reshape(direction, (3, 3)) @ ((np.asarray(grid.GetSize()) - 1)
                                                                   * np.asarray(grid.GetSpacing()) / 2)))
    folder = tmp_path_factory.mktemp("dicom") / "t1"
    write_dicom_series(sitk.Resample(mni["t1"], grid, sitk.Transform(), sitk.sitkLinear, 0.0) * 4.0, folder,
                       modality="MR", patient_id="GVSL-SEG-TEST", study_uid=generate_uid(), description="T1")
    return folder


def tissue_map_on(mni, image: sitk.Image) -> sitk.Image:
    """The template's grey (1) and white (4) matter on ``image``'s grid."""
    labels = sitk.Resample(tissue_labels(mni), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.ChangeLabel(labels, {2: 4})


def source_uids(folder) -> list[str]:
    """SOP Instance UIDs of the series in slice order (the label map's array index [k])."""
    return [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dicom_series_files(folder)]


def read_back(seg_path, folder) -> np.ndarray:
    """The SEG's voxels as label table values on the source grid ([k, j, i]), via its segment labels."""
    seg = hd.seg.segread(str(seg_path))
    numbers = seg.get_pixels_by_source_instance(source_uids(folder), combine_segments=True)
    value_of = {entry["name"]: entry["value"] for entry in TABLE["labels"]}
    lookup = np.zeros(max(seg.get_segment_numbers()) + 1, np.int64)
    for number in seg.get_segment_numbers():
        lookup[number] = value_of[seg.get_segment_description(number).segment_label]
    return lookup[numbers]


def assert_valid_dicom(path) -> None:
    """``dciodvfy`` (dicom3tools) finds no error, where it is installed."""
    if shutil.which("dciodvfy") is None:
        return
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_seg_of_a_tissue_map_references_its_series_and_reads_back(mni, series, tmp_path):
    image = read_image(series)
    labels = tissue_map_on(mni, image)
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == {0, 1, 4}
    path = write_dicom_seg(labels, TABLE, dicom_series_files(series), tmp_path / "seg.dcm")

    np.testing.assert_array_equal(read_back(path, series), sitk.GetArrayFromImage(labels))
    seg, source = hd.seg.segread(str(path)), pydicom.dcmread(dicom_series_files(series)[0])
    assert (seg.Modality, seg.StudyInstanceUID, seg.PatientID) == ("SEG", source.StudyInstanceUID, source.PatientID)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == [source.SeriesInstanceUID]
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(source_uids(series))
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID

    descriptions = [seg.get_segment_description(n) for n in seg.get_segment_numbers()]
    assert [d.segment_label for d in descriptions] == [TISSUES[1], TISSUES[2], "lesion"]
    codes_found = [(d.segmented_property_category.value, d.segmented_property_type.value) for d in descriptions]
    generic = (GENERIC_CATEGORY["value"], GENERIC_TYPE["value"])
    assert codes_found == [(codes.SCT.AnatomicalStructure.value, codes.SCT.GrayMatter.value), generic, generic]
    assert descriptions[0].segmented_property_type.scheme_designator == "SCT"
    colour = hd.color.CIELabColor.from_dicom_value(descriptions[0].RecommendedDisplayCIELabValue)
    assert colour.to_rgb() == pytest.approx(
        tuple(round(255 * c) for c in TABLE["labels"][0]["color"]), abs=1)
    assert_valid_dicom(path)


def test_seg_refuses_a_map_off_the_series_grid_and_unnamed_values(mni, series, tmp_path):
    image = read_image(series)
    labels = tissue_map_on(mni, image)
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(np.asarray(labels.GetOrigin()) + 2.0))
    with pytest.raises(ValueError, match="not a slice of the label map's grid"):
        write_dicom_seg(shifted, TABLE, dicom_series_files(series), tmp_path / "off.dcm")
    enhanced = pydicom.dcmread(dicom_series_files(series)[0])
    enhanced.NumberOfFrames = 2  # as an enhanced (multi-frame) image would be
    with pytest.raises(ValueError, match="needs a series of one file per slice"):
        slice_indices(labels, [enhanced])
    with pytest.raises(ValueError, match=r"values \[4\] that its label table does not name"):
        write_dicom_seg(labels, {"labels": TABLE["labels"][:1]}, dicom_series_files(series), tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_untrained_segmentation_model(tmp_path_factory.mktemp("model") / "model.pt", WIDTHS, TABLE, 4.0)


def test_segment_a_dicom_folder_writes_the_label_map_and_a_seg_of_it(series, model_file, tmp_path, capsys):
    common = ["--model", str(model_file), "--device", "cpu", "--overlap", "0"]
    assert main(["segment", str(series), *common, "--out", str(tmp_path / "plain.nii.gz")]) == 0
    assert main(["segment", str(series), *common, "--out", str(tmp_path / "labels.nii.gz"),
                 "--dicom-seg", str(tmp_path / "out" / "seg.dcm")]) == 0
    assert "seg.dcm" in capsys.readouterr().out
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain.nii.gz"))))
    assert len(np.unique(labels)) >= 2  # something to compare
    np.testing.assert_array_equal(read_back(tmp_path / "out" / "seg.dcm", series), labels)
    assert_valid_dicom(tmp_path / "out" / "seg.dcm")


def test_dicom_seg_needs_a_dicom_folder_and_highdicom(series, model_file, tmp_path, capsys, monkeypatch):
    volume = tmp_path / "t1.nrrd"
    sitk.WriteImage(read_image(series), str(volume))
    args = ["--model", str(model_file), "--out", str(tmp_path / "labels.nii.gz"),
            "--dicom-seg", str(tmp_path / "s.dcm")]
    assert main(["segment", str(volume), *args]) == 1
    assert "--dicom-seg needs IMAGE to be a folder holding one DICOM series" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed: import fails
    assert main(["segment", str(series), *args]) == 1
    assert "pip install 'gvsl[dicom-seg]'" in capsys.readouterr().err
    assert not (tmp_path / "labels.nii.gz").exists()  # refused before segmenting


def test_label_tables_keep_and_check_terminology():
    grey = TISSUE_TERMINOLOGY[1]
    assert (grey["category"]["value"], grey["type"]["value"]) == (codes.SCT.AnatomicalStructure.value,
                                                                  codes.SCT.GrayMatter.value)
    assert TISSUE_TERMINOLOGY[2]["type"]["value"] == codes.SCT.WhiteMatter.value
    assert check_label_table(TABLE) == TABLE and TABLE["labels"][0]["type"] == grey["type"]
    assert "category" not in TABLE["labels"][1]
    completed = complete_label_table(TABLE, [2, 4])
    assert [e["value"] for e in completed["labels"]] == [1, 2, 4, 7] and completed["labels"][0] == TABLE["labels"][0]
    entry = {"value": 1, "name": "liver", "color": [1, 0, 0]}
    with pytest.raises(ValueError, match='"category" without "type"'):
        check_label_table({"labels": [{**entry, "category": grey["category"]}]})
    with pytest.raises(ValueError, match="type of 'liver': a code needs"):
        check_label_table({"labels": [{**entry, "category": grey["category"], "type": {"scheme": "SCT"}}]})
