"""Reading a discovered series or volume file into a SimpleITK image (float32, LPS, direction cosines kept)."""
from __future__ import annotations

import SimpleITK as sitk

from .series import SeriesInfo


def read_volume(series: SeriesInfo) -> sitk.Image:
    """The series as a 3D float32 image in physical units (CT: HU; rescale slope/intercept applied by GDCM).

    DICOM slices are read in the order discovery sorted them (by position along the slice normal), so the image's
    third axis points along the normal; a single file (volume file or enhanced multi-frame DICOM) is read whole.
    Raises ``RuntimeError`` (from SimpleITK) when the files cannot be decoded.
    """
    if len(series.files) == 1:
        image = sitk.ReadImage(series.files[0], sitk.sitkFloat32)
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
