"""Finding and reading volumes: DICOM collections (grouped by Series Instance UID) and NIfTI/NRRD/MHA files."""
from .discovery import ScanOptions, is_volume_file, nothing_found_message, scan
from .reading import dicom_series_files, read_image, read_volume
from .series import DICOM, VOLUME, Geometry, SeriesInfo, error_text, hash_id

__all__ = ["DICOM", "VOLUME", "Geometry", "ScanOptions", "SeriesInfo", "dicom_series_files", "error_text", "hash_id",
           "is_volume_file", "nothing_found_message", "read_image", "read_volume", "scan"]
