"""GVSLSegment's DICOM SEG export against a real MRML scene (``slicer-core`` wheel): a sample head's DICOM series,
loaded as a volume is from Slicer's DICOM database, segmented by ``gvsl segment`` in a background process as the
module runs it; the label map becomes a segmentation with the label table's names, colours and terminology, and the
DICOM SEG reads back with highdicom with the same voxels and segment labels (and passes ``dciodvfy`` where
dicom3tools is installed).

The sample head is the MNI152 T1 template warped and written as an MR series (``gvsl.sample_data``); the model is a
narrow network with random weights and the sample heads' label table (tissues with their SNOMED CT codes): this is
about the plumbing, not about learning.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLShared"), str(ROOT / "GVSLSegment")]

from untrained_models import write_untrained_segmentation_model  # noqa: E402

from gvsl.io import dicom_series_files, read_image  # noqa: E402
from gvsl.labels import make_label_table  # noqa: E402
from gvsl.sample_data import TISSUE_COLORS, TISSUE_TERMINOLOGY, TISSUES, write_sample_collection  # noqa: E402

hd = pytest.importorskip("highdicom", reason="DICOM SEG export needs highdicom (pip install 'gvsl[dicom-seg]')")

WIDTHS = (4, 4, 8, 8, 8, 8, 8, 4, 4)
TABLE = make_label_table(TISSUES, TISSUES, TISSUE_COLORS, TISSUE_TERMINOLOGY)  # the sample heads' table


@pytest.fixture(scope="module")
def sample_series(tmp_path_factory) -> Path:
    """The MR series of one sample head (about 40 slices of 5 mm)."""
    root = write_sample_collection(tmp_path_factory.mktemp("sample"), n_subjects=1, shape_scale=0.2, seed=3)
    return root / "subject-01" / "mr"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_untrained_segmentation_model(tmp_path_factory.mktemp("model") / "model.pt", WIDTHS, TABLE, 5.0)


def load_from_dicom_database(scene, folder: Path):
    """The series as Slicer's DICOM reader loads it: a volume node whose ``DICOM.instanceUIDs`` lists its instances
    (in no particular order), and the database's lookup SOP Instance UID → file ("" for an unknown one)."""
    from GVSLSegmentLib import results
    from GVSLSharedLib import volumes
    node = volumes.add_volume_node(scene, read_image(folder, sitk.sitkFloat32), "sample MR")
    files = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in dicom_series_files(folder)}
    uids = list(files)
    random.Random(0).shuffle(uids)
    node.SetAttribute(results.DICOM_INSTANCES_ATTRIBUTE, " ".join(uids))
    return node, lambda uid: files.get(uid, "")


def test_sample_segment_dicom_seg_reads_back_with_the_voxels_names_and_terminology(scene, sample_series, model_file,
                                                                                    tmp_path):
    import slicer
    from GVSLSegmentLib import results
    from GVSLSharedLib import volumes
    from GVSLSharedLib.label_maps import import_label_map, read_label_map
    from GVSLSharedLib.pipeline_check import run_to_end
    node, file_for_instance = load_from_dicom_database(scene, sample_series)
    job = results.start_segmentation(node, model_file, tmp_path / "job", "cpu",
                                     dicom_files=results.dicom_source_files(node, file_for_instance))
    run_to_end(job.process, "gvsl segment", timeout_s=120)

    labels, table = read_label_map(job.labels, job.table)
    assert table == TABLE
    output = import_label_map(scene, labels, table, node)
    segmentation = output.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(s.GetName() for s in segments) == sorted(TISSUES.values())
    for segment in segments:
        value = next(v for v, name in TISSUES.items() if name == segment.GetName())
        assert segment.GetColor() == pytest.approx(TISSUE_COLORS[value])
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
        codes = TISSUE_TERMINOLOGY[value]
        assert (entry.GetCategoryObject().GetCodingSchemeDesignator(), entry.GetCategoryObject().GetCodeValue(),
                entry.GetTypeObject().GetCodeValue(), entry.GetTypeObject().GetCodeMeaning()) == (
            "SCT", codes["category"]["value"], codes["type"]["value"], codes["type"]["meaning"])

    label_array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(label_array)) == {0, 1, 2}  # the random network still splits the head: voxels to compare
    assert labels.GetSize() == volumes.image_from_volume_node(node).GetSize()
    seg = hd.seg.segread(str(job.seg))
    slice_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dicom_series_files(sample_series)]
    numbers = seg.get_pixels_by_source_instance(slice_uids, combine_segments=True)
    value_of = {TISSUES[v]: v for v in TISSUES}
    lookup = np.zeros(len(TISSUES) + 1, np.int64)
    for number in seg.get_segment_numbers():
        lookup[number] = value_of[seg.get_segment_description(number).segment_label]
    np.testing.assert_array_equal(lookup[numbers], label_array)

    source = pydicom.dcmread(dicom_series_files(sample_series)[0], stop_before_pixels=True)
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == [source.SeriesInstanceUID]
    assert (seg.FrameOfReferenceUID, seg.StudyInstanceUID) == (source.FrameOfReferenceUID, source.StudyInstanceUID)
    description = seg.get_segment_description(seg.get_segment_numbers()[0])
    assert description.segmented_property_type.value == TISSUE_TERMINOLOGY[1]["type"]["value"]
    assert list(job.seg.parent.iterdir()) == [job.seg]  # alone in its folder: importable into the DICOM database
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(job.seg)], capture_output=True, text=True)
        assert not [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]


def test_dicom_seg_needs_a_volume_from_the_dicom_database_and_empty_segments_keep_terminology(scene, sample_series):
    from GVSLSegmentLib import finetuning, results
    from GVSLSharedLib import volumes
    from GVSLSharedLib.label_maps import import_label_map
    from GVSLSharedLib.terminology import terminology_entry

    from gvsl.cli import build_parser
    node, file_for_instance = load_from_dicom_database(scene, sample_series)
    assert len(results.dicom_source_files(node, file_for_instance)) == len(dicom_series_files(sample_series))
    with pytest.raises(ValueError, match=r"1 of the \d+ DICOM files of 'sample MR' are missing"):
        results.dicom_source_files(node, lambda uid: "" if uid == node.GetAttribute(
            results.DICOM_INSTANCES_ATTRIBUTE).split()[3] else file_for_instance(uid))
    plain = volumes.add_volume_node(scene, read_image(sample_series), "from a file")
    with pytest.raises(ValueError, match="'from a file' was not loaded from the DICOM database"):
        results.dicom_source_files(plain, file_for_instance)
    empty = sitk.Image(volumes.image_from_volume_node(node).GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(volumes.image_from_volume_node(node))
    output = import_label_map(scene, empty, TABLE, node)  # structures absent from the map: empty segments
    terminologies = [output.GetSegmentation().GetNthSegment(i).GetTerminology() for i in range(2)]
    assert terminologies == [terminology_entry(entry) for entry in TABLE["labels"]]
    assert "SCT^389080008^White Matter" in terminologies[1]
    args = build_parser().parse_args(finetuning.segment_command("dicom", "run", "out.nrrd", "cpu", "s.dcm")[3:])
    assert (args.image, args.dicom_seg) == ("dicom", "s.dcm")
    assert build_parser().parse_args(finetuning.segment_command("in.nrrd", "run", "out.nrrd")[3:]).dicom_seg is None
