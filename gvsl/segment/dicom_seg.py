"""DICOM SEG export of a label map, written against the DICOM series it was computed on (highdicom).

One segment per entry of the label table, numbered 1..n in table order: SegmentLabel is the entry's name, the
segmented property category and type are its codes (SNOMED CT where the table gives them, else
``gvsl.labels.GENERIC_CATEGORY``/``GENERIC_TYPE``), the display colour its colour. The SEG is a BINARY
segmentation whose frames are the source slices (empty frames left out); highdicom fills in the references to the
source series (ReferencedSeriesSequence, SourceImageSequence), its study and patient, and its FrameOfReferenceUID.
highdicom is the optional extra ``gvsl[dicom-seg]``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl import __version__
from gvsl.labels import Code, LabelTable, check_label_table, terminology_codes

if TYPE_CHECKING:  # imported where a SEG is written: segmenting to NIfTI does without pydicom
    import pydicom

INSTALL_HINT = "DICOM SEG export needs highdicom: pip install 'gvsl[dicom-seg]' (or: pip install highdicom)"
SERIES_NUMBER = 300  # series number of the SEG (a derived series; the source keeps its own)
SERIES_DESCRIPTION = "GVSL segmentation"
ALGORITHM_NAME = "GVSL"
GRID_TOLERANCE_VOXELS = 0.01  # how far a source slice may lie from a slice of the label map's grid
# Patient and study attributes of type 2 (present, possibly empty) that the SEG copies from its source; some
# exports leave them out, and the SEG then gets them empty.
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


def require_highdicom() -> Any:
    """The ``highdicom`` module; ValueError with the install command when it is not installed."""
    try:
        import highdicom
    except ImportError as exc:
        raise ValueError(INSTALL_HINT) from exc
    return highdicom


def read_source(path: str | os.PathLike) -> pydicom.Dataset:
    """A source image's header (no pixels: the SEG needs none), with the ``COPIED_TYPE2`` attributes it lacks
    added empty."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    for keyword in COPIED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def slice_indices(label: sitk.Image, sources: Sequence[pydicom.Dataset]) -> list[int]:
    """For each source image, the slice k of ``label`` (array index [k]) it is.

    A source is a slice of the label map's grid when its ImagePositionPatient (LPS mm) is the physical point of
    voxel (0, 0, k), its ImageOrientationPatient the grid's first two direction columns and its Rows x Columns
    the grid's (j, i) size. ValueError naming the first source that is not (a multi-frame image is not supported),
    and when two are the same slice.
    """
    direction = np.asarray(label.GetDirection()).reshape(3, 3)
    size_i, size_j, size_k = label.GetSize()
    indices = []
    for ds in sources:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "ImagePositionPatient" not in ds:
            raise ValueError(f"source image {ds.get('SOPInstanceUID', '?')} is not a single-frame slice with a "
                             "position: DICOM SEG export needs a series of one file per slice")
        index = np.asarray(label.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient]))
        k = int(round(index[2]))
        on_grid = (np.all(np.abs(index - [0, 0, k]) < GRID_TOLERANCE_VOXELS) and 0 <= k < size_k
                   and np.allclose([float(v) for v in ds.ImageOrientationPatient],
                                   [*direction[:, 0], *direction[:, 1]], atol=1e-4)
                   and (int(ds.Rows), int(ds.Columns)) == (size_j, size_i))
        if not on_grid:
            raise ValueError(f"source image {ds.SOPInstanceUID} (instance {ds.get('InstanceNumber', '?')}) is not a "
                             "slice of the label map's grid: the label map must be computed on this DICOM series")
        indices.append(k)
    if len(set(indices)) != len(indices):
        raise ValueError("several source images lie on the same slice of the label map")
    return indices


def coded_concept(code: Code) -> Any:
    """A highdicom coded concept of a label table code ``{"scheme", "value", "meaning"}``."""
    hd = require_highdicom()
    return hd.sr.CodedConcept(value=code["value"], scheme_designator=code["scheme"], meaning=code["meaning"])


def segment_descriptions(table: LabelTable) -> list[Any]:
    """One highdicom ``SegmentDescription`` per table entry, numbered 1..n in table order (automatic, by GVSL)."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, entry in enumerate(table["labels"], start=1):
        category, kind = terminology_codes(entry)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=entry["name"], segmented_property_category=coded_concept(category),
            segmented_property_type=coded_concept(kind), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(255.0 * c for c in entry["color"]))))
    return descriptions


def write_dicom_seg(label: sitk.Image, table: LabelTable, source_files: Sequence[str | os.PathLike],
                    path: str | os.PathLike) -> Path:
    """Write the label map ``label`` (values of ``table``, 0 background, on exactly the grid of the series
    ``source_files``, e.g. ``gvsl segment``'s output for that series) as a DICOM SEG file at ``path``.

    Raises ValueError when highdicom is missing, when the map holds values the table does not name, and when a
    source file is not a slice of the map's grid.
    """
    hd = require_highdicom()
    table = check_label_table(table)
    sources = [read_source(f) for f in source_files]
    frames = sitk.GetArrayViewFromImage(label)[slice_indices(label, sources)]  # (n sources, rows, columns)
    values = [entry["value"] for entry in table["labels"]]
    unnamed = sorted(set(np.unique(frames).tolist()) - {0, *values})
    if unnamed:
        raise ValueError(f"the label map holds values {unnamed} that its label table does not name")
    numbers = np.zeros(max([*values, int(frames.max())]) + 1, np.uint16)
    numbers[values] = np.arange(1, len(values) + 1)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbers[frames], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(table), series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1, manufacturer=ALGORITHM_NAME,
        manufacturer_model_name="gvsl segment", software_versions=__version__, device_serial_number="1",
        series_description=SERIES_DESCRIPTION)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
