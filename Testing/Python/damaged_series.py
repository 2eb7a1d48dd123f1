"""DICOM series with damaged files, as interrupted copies and exports leave them, for the scan and prepare tests."""
from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from gvsl.sample_data import load_mni, write_dicom_series


def write_t1_series(folder: Path) -> list[Path]:
    """20 axial slices of the MNI T1 template (4 mm voxels) as an MR series ``IM00001.dcm``...; paths in slice
    order."""
    return write_dicom_series(load_mni(4.0)["t1"][:, :, 10:30] * 4.0, folder, modality="MR", patient_id="TRUNC",
                              study_uid=generate_uid(), description="T1")


def truncate(path: Path, n_bytes: int = 1000) -> None:
    """Cut the last ``n_bytes`` (pixel data) off a file, as an interrupted copy does."""
    path.write_bytes(path.read_bytes()[:-n_bytes])


def write_truncated_duplicate(paths: list[Path], k: int) -> Path:
    """``IM99999.dcm``: a second copy of slice ``k`` (new SOP Instance UID, same position), truncated."""
    ds = pydicom.dcmread(paths[k])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy = paths[k].with_name("IM99999.dcm")
    ds.save_as(copy, enforce_file_format=True)
    truncate(copy)
    return copy
