"""Discovery: walk a folder tree, group DICOM files into series by Series Instance UID (never by folder), and
decide for each series (and each volume file: NIfTI, NRRD, MHA/MHD) whether it forms a usable CT/MR volume.

Only headers are read from DICOM files (pydicom with ``stop_before_pixels``), so scanning them is cheap. A volume
file is read whole: its compressed stream to its end and its byte count against its header (``gvsl.io.completeness``:
a cut file is refused, not read as zeros), its voxels to tell a label map from a scan (integer pixel types, see
``LABEL_MAP_MAX_VALUES``) and to count NaN/Inf (float types, see ``MAX_NON_FINITE_SHARE``). Geometry is reported as
SimpleITK would build it: (x, y, z) order, mm, LPS.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .completeness import IncompleteFileError, check_volume_file
from .series import DICOM, VOLUME, Geometry, SeriesInfo, error_text, hash_id

if TYPE_CHECKING:  # pydicom is imported where DICOM is read: reading a volume file (gvsl segment) does without it
    import pydicom

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_MODALITIES = ("CT", "MR")
#: Modalities that never hold an image volume: reports, structure sets, segmentations, presentation states,
#: key-object selections, encapsulated documents, waveforms, registrations.
NON_IMAGE_MODALITIES = {"SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "SEG", "PR", "KO", "DOC", "ECG", "HD", "AU",
                        "REG", "RWV", "PLAN", "FID"}
#: An integer volume file with at most this many distinct voxel values is a label map (segmentation), not a scan.
#: Real CT and MR hold hundreds to thousands of values (noise and partial volume alone give that; even an 8-bit
#: export of a usable scan spans far more than 64 grey levels, 6 bits), while tissue/organ label maps hold a few
#: to a few dozen. Atlases with more labels (e.g. 100+ organ classes) are not caught by this count.
LABEL_MAP_MAX_VALUES = 64
_INTEGER_PIXEL_IDS = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32,
                      sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64}
_FLOAT_PIXEL_IDS = {sitk.sitkFloat32, sitk.sitkFloat64}
#: Pixel types whose voxels discovery reads: integers (label map or scan?) and floats (NaN/Inf?).
_READ_PIXEL_IDS = _INTEGER_PIXEL_IDS | _FLOAT_PIXEL_IDS
#: A float volume file with a larger share of NaN/Inf voxels is refused; a smaller share is repaired by ``prepare``
#: (set to the value that normalises to 0, see ``gvsl.data.preprocess``) and reported in the scan's note.
MAX_NON_FINITE_SHARE = 0.5
#: A grid wider than this along any axis is no patient scan (a whole-body CT spans about 2 m).
MAX_FIELD_OF_VIEW_MM = 5000.0
#: Voxels in the strided sample that rules out a label map before counting every voxel's value (sorting ~1e6 values
#: takes tens of ms; a CT volume has ~1e8).
_SAMPLE_VOXELS = 1_000_000
#: The data elements discovery reads (decoded once in ``_read_header``, where a damaged one is caught).
_ELEMENTS_READ = ("SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality", "SOPClassUID", "SeriesDescription",
                  "StudyDescription", "ImageType", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
                  "BitsAllocated", "PhotometricInterpretation", "PixelSpacing", "ImagePositionPatient",
                  "ImageOrientationPatient")
_META_ELEMENTS_READ = ("TransferSyntaxUID", "MediaStorageSOPClassUID")
#: How much of a file without a readable SeriesInstanceUID is searched for the UID of a series (its header).
_ORPHAN_BYTES = 1 << 16
_UID_TEXT = re.compile(rb"[0-9]+(?:\.[0-9]+)+")


@dataclass
class ScanOptions:
    """What counts as usable, and which usable series to keep.

    ``modalities``: subset of CT/MR to keep. ``description_regex``: kept if it matches (``re.search``, case
    insensitive) the series or the study description. ``min_slices``: fewer slices is a localizer/scout.
    ``max_series``: keep at most this many usable series (in scan order). ``spacing_tolerance``: largest allowed
    deviation of a slice gap from the median gap, as a fraction of the median. ``volume_modality``: modality
    assumed for NIfTI/NRRD/MHA files ("auto": decided from intensities when the volume is read).
    """

    modalities: tuple[str, ...] = SUPPORTED_MODALITIES
    description_regex: str | None = None
    min_slices: int = 10
    max_series: int | None = None
    spacing_tolerance: float = 0.1
    volume_modality: str = "auto"


@dataclass
class _Header:
    """What discovery needs from one DICOM file (read with ``stop_before_pixels``)."""

    path: str
    size: int
    ds: pydicom.Dataset
    truncated: bool

    def get(self, name: str, default=None):
        value = self.ds.get(name, default)
        return default if value is None or value == "" else value


def is_volume_file(path: Path | str) -> bool:
    """True for file names that SimpleITK reads as whole volumes (NIfTI, NRRD, MHA/MHD)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def nothing_found_message(root: Path | str) -> str:
    """What ``gvsl scan`` and ``gvsl prepare`` say when ``scan(root)`` found no candidate volume at all."""
    return f"no DICOM series or volume file (NIfTI, NRRD, MHA/MHD) found under {root}"


def scan(root: Path | str, options: ScanOptions | None = None, *, progress: bool = False) -> list[SeriesInfo]:
    """Every candidate volume under ``root`` (a folder, walked recursively, or a single file).

    Returns usable and skipped records alike (``usable``/``reason``), sorted by patient, study and series. Files
    that are neither DICOM nor volume files are ignored. A DICOM file whose header cannot be parsed, or that lacks a
    SeriesInstanceUID, makes the series it names (or whose UID its bytes hold) unusable; when it names none it is
    reported as a record of its own.
    """
    options = options or ScanOptions()
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    records: list[SeriesInfo] = []
    by_series: dict[str, list[_Header]] = defaultdict(list)
    unreadable: dict[str, list[SeriesInfo]] = defaultdict(list)  # by the Series Instance UID they still show
    for path in tqdm(list(_walk(root)), desc="scan", unit="file", disable=not progress):
        if is_volume_file(path):
            records.append(_assess_volume(path, root, options))
            continue
        header = _read_header(path)
        if isinstance(header, SeriesInfo):
            unreadable[header.series_uid].append(header)
        elif header is not None and not _is_directory_record(header):
            by_series[str(header.get("SeriesInstanceUID", ""))].append(header)
    orphans = unreadable.pop("", []) + [
        SeriesInfo(key=hash_id(h.path), kind=DICOM, files=[h.path], size_bytes=h.size).skip(
            "corrupt or incomplete DICOM header (no SeriesInstanceUID)") for h in by_series.pop("", [])]
    for orphan in orphans:
        orphan.series_uid = _series_named_in(orphan.files[0], by_series.keys())
        unreadable[orphan.series_uid].append(orphan)
    records += [r for uid, files in unreadable.items() if uid not in by_series for r in files]
    for uid, headers in by_series.items():
        try:
            records.extend(_assess_dicom_series(uid, headers, options, unreadable.get(uid, [])))
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:  # malformed values, e.g. "1A"
            record = SeriesInfo(key=hash_id(uid), kind=DICOM, files=sorted(h.path for h in headers), series_uid=uid,
                                size_bytes=sum(h.size for h in headers))
            records.append(record.skip(f"invalid DICOM header values ({type(exc).__name__}: {error_text(exc)})"))
    for record in records:
        problem = _geometry_problem(record.geometry) if record.usable and record.geometry else ""
        if problem:
            record.skip(problem)
    records.sort(key=lambda r: (r.patient_id, r.study_uid, r.series_uid, r.key))
    return _apply_filters(records, options)


def _geometry_problem(geometry: Geometry) -> str:
    """Why a voxel grid cannot be a patient scan ("" when it can): a voxel size that is not a positive number, or a
    field of view beyond ``MAX_FIELD_OF_VIEW_MM`` (a damaged PixelSpacing such as 5661468 would make preprocessing
    allocate a grid of that extent)."""
    spacing = np.asarray(geometry.spacing, float)
    if not (np.isfinite(spacing).all() and spacing.min() > 0):
        return f"invalid voxel size {tuple(spacing.round(4))} mm"
    extent = spacing * np.asarray(geometry.size, float)
    if extent.max() > MAX_FIELD_OF_VIEW_MM:
        return (f"implausible field of view {' x '.join(f'{e:.0f}' for e in extent)} mm (voxel size "
                f"{' x '.join(f'{v:g}' for v in spacing)} mm): damaged spacing?")
    return ""


def _walk(root: Path) -> Iterator[str]:
    """Files under ``root`` in a stable order, skipping hidden files and folders (and subfolders that cannot be
    listed); raises OSError when ``root`` itself cannot be listed."""
    if root.is_file():
        yield str(root)
        return

    def unless_root(error: OSError) -> None:
        if error.filename is not None and Path(error.filename) == root:
            raise error

    for folder, dirs, files in os.walk(root, onerror=unless_root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(folder, name)


def _read_header(path: str) -> _Header | SeriesInfo | None:
    """The file's header; a skipped record for a broken DICOM file; None for a file that is not DICOM.

    pydicom decodes an element's value when it is first read, so every element discovery reads is decoded here,
    where a damaged one (wrong length, unknown VR, a UID that is no transfer syntax...) makes this one file
    unreadable instead of stopping the scan later.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # malformed values: judged with the rest of the series
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            remaining = os.fstat(fp.fileno()).st_size - fp.tell()
            for name in _ELEMENTS_READ:
                ds.get(name)
            for name in _META_ELEMENTS_READ:
                ds.file_meta.get(name)
            truncated = _is_truncated(ds, remaining)
    except InvalidDicomError:
        return None
    except Exception as exc:  # any parser failure means an unreadable file, reported with its cause
        return SeriesInfo(key=hash_id(path), kind=DICOM, files=[path], series_uid=_series_uid_of(path),
                          size_bytes=_size(path)).skip(f"unreadable DICOM file ({type(exc).__name__}: {_short(exc)})")
    return _Header(path=path, size=_size(path), ds=ds, truncated=truncated)


def _series_named_in(path: str, series_uids: Iterable[str]) -> str:
    """The one UID of ``series_uids`` written in the first bytes of ``path`` ("" when none or several are): a
    file whose SeriesInstanceUID element is damaged (its tag or length bytes) still holds the UID's characters."""
    try:
        with open(path, "rb") as file:
            head = file.read(_ORPHAN_BYTES)
    except OSError:
        return ""
    found = {uid.decode("ascii") for uid in _UID_TEXT.findall(head)} & set(series_uids)
    return found.pop() if len(found) == 1 else ""


def _series_uid_of(path: str) -> str:
    """The Series Instance UID of a file whose header as a whole cannot be parsed, when that one element can be
    ("" when not)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            return str(ds.get("SeriesInstanceUID") or "")
    except Exception:  # nothing can be recovered from this file: it stays a record of its own
        return ""


def _short(exc: BaseException, limit: int = 160) -> str:
    """``error_text`` cut to ``limit`` characters (pydicom quotes whole damaged byte strings in its messages)."""
    text = error_text(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_truncated(ds: pydicom.Dataset, remaining: int) -> bool:
    """Whether fewer bytes follow the header than uncompressed pixel data needs (plus 8 bytes of element header).

    Raises ValueError when the transfer syntax is a UID that is not a transfer syntax.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if "Rows" not in ds or syntax is None or syntax.is_compressed or syntax.is_deflated:
        return False  # compressed pixel data, or a deflated dataset (read whole, then inflated): sizes unknown here
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        needed = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated)
    except (ValueError, TypeError, AttributeError):
        return False  # cannot tell from malformed values; judged with the rest of the header
    return remaining < needed // 8 + 8


def _is_directory_record(header: _Header) -> bool:
    """DICOMDIR index files list other files; they are not series."""
    return str(header.ds.file_meta.get("MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _assess_volume(path: str, root: Path, options: ScanOptions) -> SeriesInfo:
    """A NIfTI/NRRD/MHA/MHD file: usable when it is a 3D scalar volume with enough slices."""
    rel = os.path.relpath(path, root) if root.is_dir() else os.path.basename(path)
    modality = "" if options.volume_modality == "auto" else options.volume_modality
    info = SeriesInfo(key=hash_id(rel), kind=VOLUME, files=[path], modality=modality, size_bytes=_size(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return info.skip(f"unreadable volume file ({error_text(exc)})")
    size = reader.GetSize()
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        return info.skip(f"{len(size)}D image (a 3D volume is needed)")
    direction = np.asarray(reader.GetDirection()).reshape(len(reader.GetSize()), -1)[:3, :3]
    info.geometry = Geometry(tuple(size), reader.GetSpacing()[:3], reader.GetOrigin()[:3], tuple(direction.ravel()))
    if reader.GetNumberOfComponents() != 1:
        return info.skip(f"colour or vector image ({reader.GetNumberOfComponents()} components per voxel)")
    if min(size) < options.min_slices:
        return info.skip(f"too few slices ({min(size)} < {options.min_slices}): localizer or 2D stack")
    try:
        stored_non_finite = check_volume_file(reader)
        image = reader.Execute() if reader.GetPixelID() in _READ_PIXEL_IDS else None
    except IncompleteFileError as exc:
        return info.skip(str(exc))
    except (RuntimeError, OSError) as exc:
        return info.skip(f"unreadable volume file ({error_text(exc)})")
    if image is None:
        return info
    voxels = sitk.GetArrayViewFromImage(image)  # a view: valid while ``image`` lives
    if reader.GetPixelID() in _INTEGER_PIXEL_IDS:
        n_values = _few_distinct_values(voxels, LABEL_MAP_MAX_VALUES)
        if n_values is not None:
            return info.skip(f"label map ({n_values} distinct integer values), not an image")
        return info
    non_finite = voxels.size - np.count_nonzero(np.isfinite(voxels)) if stored_non_finite is None else \
        stored_non_finite.size  # NIfTI: SimpleITK has read them as 0, their positions come from the file
    share = non_finite / voxels.size
    if share > MAX_NON_FINITE_SHARE:
        return info.skip(f"non-finite voxels: {100 * share:.1f} % (more than {100 * MAX_NON_FINITE_SHARE:.0f} % "
                         "NaN/Inf: more hole than image)")
    if share:
        info.note = f"non-finite voxels: {100 * share:.1f} % (NaN/Inf; prepare sets them to the background value)"
    return info


def _few_distinct_values(values: np.ndarray, limit: int) -> int | None:
    """The number of distinct values in ``values`` (any shape) when it is at most ``limit``, else None."""
    values = values.ravel()
    if len(np.unique(values[:: max(1, values.size // _SAMPLE_VOXELS)])) > limit:
        return None
    n_values = len(np.unique(values))
    return n_values if n_values <= limit else None


def _assess_dicom_series(uid: str, headers: list[_Header], options: ScanOptions, unreadable: list[SeriesInfo]
                         ) -> list[SeriesInfo]:
    """One record per series, or one per part when mixed orientations/sizes split it into stacks.

    Truncated files that only repeat a slice held by a readable file are left out of the record (and so never
    given to the reader); its note names them. ``unreadable``: the series' files whose header cannot be parsed
    (records from ``_read_header``); any makes the series unusable.
    """
    headers, duplicates = _drop_truncated_duplicates(headers)
    first = headers[0]
    info = SeriesInfo(
        key=hash_id(uid or first.path), kind=DICOM, files=sorted(h.path for h in headers),
        modality=str(first.get("Modality", "")).upper(), patient_id=str(first.get("PatientID", "")),
        study_uid=str(first.get("StudyInstanceUID", "")), series_uid=uid,
        description=str(first.get("SeriesDescription", "")), size_bytes=sum(h.size for h in headers),
        note="; ".join(f"skipped truncated file {os.path.basename(bad.path)} (a copy of the slice in "
                       f"{os.path.basename(twin.path)})" for bad, twin in duplicates),
        extra={"study_description": str(first.get("StudyDescription", ""))},
    )
    if unreadable:
        info.files = sorted(info.files + [r.files[0] for r in unreadable])
        info.size_bytes += sum(r.size_bytes for r in unreadable)
        first_bad = unreadable[0]
        return [info.skip(f"unreadable file(s): {len(unreadable)} of {len(info.files)} ("
                          f"{os.path.basename(first_bad.files[0])}: {first_bad.reason})")]
    reason = _series_problem(info, headers, options)
    if reason:
        return [info.skip(reason)]
    if int(first.get("NumberOfFrames") or 1) > 1:
        return [_assess_multiframe(info, options)]
    stacks = _split_stacks(headers)
    if len(stacks) == 1:
        return [_assess_stack(info, headers, options)]
    parts = []
    for n, stack in enumerate(stacks, start=1):
        part = replace(info, key=f"{info.key}.{n}", files=[h.path for h in stack],
                       size_bytes=sum(h.size for h in stack), note="; ".join(filter(None, [
                           f"part {n} of {len(stacks)} (series mixes orientations or image sizes)", info.note])))
        parts.append(_assess_stack(part, stack, options))
    return parts


def _series_problem(info: SeriesInfo, headers: list[_Header], options: ScanOptions) -> str:
    """Why the series as a whole cannot be a volume ("" when it might be)."""
    first = headers[0]
    if info.modality in NON_IMAGE_MODALITIES or ("Rows" not in first.ds and info.modality not in SUPPORTED_MODALITIES):
        return f"non-image object (Modality {info.modality or '?'}, {_sop_class_name(first.ds)})"
    if info.modality not in SUPPORTED_MODALITIES:
        return f"modality {info.modality or '?'} is not CT or MR"
    if any("Rows" not in h.ds for h in headers):
        return "incomplete DICOM header: no image attributes (truncated file?)"
    broken = [h for h in headers if h.truncated]
    if broken:
        names = ", ".join(os.path.basename(h.path) for h in broken[:3]) + (", ..." if len(broken) > 3 else "")
        return (f"truncated file(s): {len(broken)} of {len(headers)} ({names}); no readable file holds their slices, "
                "so the stack would have a gap")
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer/scout (ImageType LOCALIZER)"
    samples, photometric = int(first.get("SamplesPerPixel", 1)), str(first.get("PhotometricInterpretation", ""))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        return f"colour image (PhotometricInterpretation {photometric or '?'}, {samples} samples per pixel)"
    multiframe = int(first.get("NumberOfFrames") or 1) > 1
    if multiframe and len(headers) > 1:
        return f"{len(headers)} multi-frame files in one series (one enhanced volume per series is supported)"
    if not multiframe and len(headers) == 1:
        return "single 2D image"
    return ""


def _sop_class_name(ds: pydicom.Dataset) -> str:
    sop = ds.get("SOPClassUID")
    return getattr(sop, "name", str(sop)) if sop else "no SOP class"


def _assess_multiframe(info: SeriesInfo, options: ScanOptions) -> SeriesInfo:
    """An enhanced (multi-frame) CT/MR file: usable when SimpleITK/GDCM reads it as a 3D volume."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(info.files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return info.skip(f"enhanced multi-frame file not readable by SimpleITK/GDCM ({error_text(exc)})")
    size = reader.GetSize()
    if len(size) != 3 or size[2] < options.min_slices:
        return info.skip(f"enhanced multi-frame file read as size {size}, not a 3D volume of >= {options.min_slices}"
                         " slices")
    info.geometry = Geometry(tuple(size), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    return info


def _drop_truncated_duplicates(headers: list[_Header]) -> tuple[list[_Header], list[tuple[_Header, _Header]]]:
    """Split off truncated files whose slice a readable file of the series also holds (same stack and
    ImagePositionPatient to the micrometre): extra copies, e.g. from an interrupted re-send. Returns (the other
    headers, [(truncated file, readable file at its position)])."""
    truncated = [h for h in headers if h.truncated and h.get("ImagePositionPatient") is not None]
    if not truncated:
        return headers, []
    readable = {_slice_key(h): h for h in headers if not h.truncated and h.get("ImagePositionPatient") is not None}
    duplicates = [(h, readable[_slice_key(h)]) for h in truncated if _slice_key(h) in readable]
    dropped = {bad.path for bad, _ in duplicates}
    return [h for h in headers if h.path not in dropped], duplicates


def _slice_key(header: _Header) -> tuple:
    """Stack (``_stack_key``) and ImagePositionPatient rounded to 0.001 mm: equal for two copies of one slice."""
    return _stack_key(header), tuple(np.round(np.asarray(header.get("ImagePositionPatient"), float), 3) + 0.0)


def _stack_key(header: _Header) -> tuple:
    """Orientation, image size and pixel spacing: slices that share them can form one stack."""
    orientation = tuple(np.round(np.asarray(header.get("ImageOrientationPatient", [0] * 6), float), 3) + 0.0)
    spacing = tuple(np.round(np.asarray(header.get("PixelSpacing", [0, 0]), float), 3))
    return orientation, int(header.get("Rows", 0)), int(header.get("Columns", 0)), spacing


def _split_stacks(headers: list[_Header]) -> list[list[_Header]]:
    """Group slices by ``_stack_key`` (each group is one candidate stack)."""
    groups: dict[tuple, list[_Header]] = defaultdict(list)
    for h in headers:
        groups[_stack_key(h)].append(h)
    return list(groups.values())


def _assess_stack(info: SeriesInfo, headers: list[_Header], options: ScanOptions) -> SeriesInfo:
    """Sort slices along their normal and check count, positions and spacing; fill in the geometry."""
    if any(h.get("ImagePositionPatient") is None or h.get("ImageOrientationPatient") is None for h in headers):
        return info.skip("missing ImagePositionPatient or ImageOrientationPatient")
    iop = np.asarray(headers[0].get("ImageOrientationPatient"), float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.array([np.asarray(h.get("ImagePositionPatient"), float) for h in headers])
    pixel_spacing = np.asarray(headers[0].get("PixelSpacing", [1.0, 1.0]), float)
    if not (np.isfinite(positions).all() and np.isfinite(iop).all() and np.isfinite(pixel_spacing).all()):
        return info.skip("non-finite ImagePositionPatient, ImageOrientationPatient or PixelSpacing")
    if abs(np.linalg.norm(normal) - 1.0) > 0.01 or pixel_spacing.min() <= 0:
        return info.skip(f"invalid geometry: ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors "
                         f"or PixelSpacing {list(pixel_spacing)} is not positive")
    order = np.argsort(positions @ normal)
    positions, headers = positions[order], [headers[i] for i in order]
    info.files = [h.path for h in headers]
    gaps = np.diff(positions @ normal)
    gap = float(np.median(gaps)) if len(gaps) else 0.0
    info.geometry = Geometry((int(headers[0].get("Columns")), int(headers[0].get("Rows")), len(headers)),
                             (float(pixel_spacing[1]), float(pixel_spacing[0]), gap), tuple(positions[0]),
                             tuple(np.stack([row, col, normal], axis=1).ravel()))
    if len(headers) < options.min_slices:
        return info.skip(f"too few slices ({len(headers)} < {options.min_slices}): localizer or 2D stack")
    if gaps.min() < 1e-3:
        return info.skip(f"{int(np.sum(gaps < 1e-3))} slices share a position (several echoes, phases or repeats)")
    if np.abs(gaps - gap).max() > options.spacing_tolerance * gap:
        return info.skip(f"irregular slice spacing: gaps {gaps.min():.2f} to {gaps.max():.2f} mm, median {gap:.2f} mm"
                         " (missing slices?)")
    lateral = positions - positions[:1] - np.outer((positions - positions[:1]) @ normal, normal)
    if np.linalg.norm(lateral, axis=1).max() > options.spacing_tolerance * gap:
        return info.skip("slices are not stacked along their normal (gantry tilt or shifted slices)")
    return info


def _apply_filters(records: list[SeriesInfo], options: ScanOptions) -> list[SeriesInfo]:
    """Mark usable records that the modality / description / count filters exclude."""
    pattern = re.compile(options.description_regex, re.IGNORECASE) if options.description_regex else None
    kept = 0
    for r in records:
        if not r.usable:
            continue
        if r.modality and r.modality not in options.modalities:
            r.skip(f"filtered out: modality {r.modality} not in {', '.join(options.modalities)}")
        elif pattern and not any(pattern.search(d) for d in _descriptions(r)):
            r.skip(f"filtered out: description does not match {options.description_regex!r}")
        elif options.max_series is not None and kept >= options.max_series:
            r.skip(f"filtered out: beyond the first {options.max_series} series")
        else:
            kept += 1
    return records


def _descriptions(record: SeriesInfo) -> Iterable[str]:
    return (record.description, str(record.extra.get("study_description", "")))
