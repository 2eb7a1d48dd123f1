"""Reading images into SimpleITK (LPS, direction cosines kept): a discovered series (float32) for the training
cache, and the image file or DICOM series folder a person names to ``gvsl match`` or ``gvsl segment``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .completeness import IncompleteFileError, check_volume_file
from .series import SeriesInfo


def read_volume(series: SeriesInfo) -> sitk.Image:
    """The series as a 3D float32 image in physical units (CT: HU; rescale slope/intercept applied by GDCM).

    DICOM slices are read in the order discovery sorted them (by position along the slice normal), so the image's
    third axis points along the normal; a single file (volume file or enhanced multi-frame DICOM) is read whole.
    NaN/Inf voxels are NaN (also in a NIfTI file, which SimpleITK reads with 0 there): preprocessing counts them
    and sets them to the background value. Raises ``RuntimeError`` (from SimpleITK) when the files cannot be
    decoded, ``IncompleteFileError`` (a ValueError) when a volume file holds fewer voxels than its header announces.
    """
    if len(series.files) == 1:
        image = _restore_non_finite(*_read_file(series.files[0], sitk.sitkFloat32))
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(series.files)
        reader.SetOutputPixelType(sitk.sitkFloat32)
        image = reader.Execute()
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ValueError(f"{image.GetDimension()}D image: a 3D volume is needed")
    return image


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The files of the one DICOM series in ``folder``, in the order ``read_image`` reads them (GDCM's: by position
    along the slice normal), so slice k of the image is file k. ValueError when the folder holds none or several."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise ValueError(f"{folder}: {len(series)} DICOM series in this folder; a folder holding one is needed")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def read_image(path: str | os.PathLike, pixel_type: int = sitk.sitkUnknown) -> sitk.Image:
    """A volume file, or the one DICOM series in a folder, with ``pixel_type`` (``sitkUnknown``: the file's own).

    Raises ValueError naming the path when it does not exist, when a folder holds no DICOM series or several, when
    a volume file is incomplete (``gvsl.io.completeness``) and when SimpleITK cannot read it (with the last line of
    SimpleITK's reason).
    """
    path = Path(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(dicom_series_files(path))
            reader.SetOutputPixelType(pixel_type)
            return reader.Execute()
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        return _read_file(str(path), pixel_type)[0]
    except IncompleteFileError as exc:
        raise ValueError(f"cannot read {path} as an image: {exc}") from exc
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {path} as an image: {reason}") from exc


def _read_file(path: str, pixel_type: int) -> tuple[sitk.Image, np.ndarray | None]:
    """One image file with ``pixel_type``, once its voxel data are known to be complete (``check_volume_file``), and
    the positions of the NaN/Inf values of a float NIfTI file, which SimpleITK reads as 0 (else None)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    non_finite = check_volume_file(reader)
    reader.SetOutputPixelType(pixel_type)
    return reader.Execute(), non_finite


def _restore_non_finite(image: sitk.Image, positions: np.ndarray | None) -> sitk.Image:
    """``image`` with NaN at ``positions`` (indices into its raveled [k, j, i] array), where SimpleITK put 0."""
    if positions is None or not positions.size or image.GetNumberOfComponentsPerPixel() != 1:
        return image
    values = sitk.GetArrayFromImage(image)
    values.reshape(-1)[positions] = np.nan
    restored = sitk.GetImageFromArray(values)
    restored.CopyInformation(image)
    return restored
