"""A seeded generator of damaged inputs next to clean ones, as a new user's collection holds them, for the fuzz test
and ``benchmarks/reliability.py``.

Every input lies in its own top-level folder of the collection (``case_of`` maps a scanned record back to it). The
clean scans are real images: a 12-slice CT series made of pydicom's real ``CT_small.dcm`` slice (MIT licence) and
nibabel's real ``anatomical.nii`` (MIT licence). The damaged ones are copies of those (header bytes flipped, files
cut, tags made wrong) and a few odd files (empty, junk, 2D, 4D, non-finite voxels, a symlink loop).
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.testing import data_path as nibabel_data_path
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

CLEAN_CT, CLEAN_NIFTI = "clean_ct", "clean_nifti"
SLICES = 12


@dataclass
class Case:
    """One input: its folder ``name``, its ``kind`` (for the reliability table), and whether its damage must make it
    unusable (``broken``; False for random header bytes, which may hit a harmless byte such as a letter of a
    description, and for the clean scans)."""

    name: str
    kind: str
    broken: bool
    damaged: bool = True


@dataclass
class DamagedCollection:
    root: Path
    cases: list[Case] = field(default_factory=list)

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)


def case_of(collection: DamagedCollection, file: str) -> Case:
    """The case a scanned file belongs to (its top-level folder under the collection's root)."""
    return collection.case(Path(os.path.relpath(file, collection.root)).parts[0])


def write_ct_series(folder: Path, syntax: str = ExplicitVRLittleEndian, uid_seed: str | None = None) -> list[Path]:
    """12 axial slices 2 mm apart, each the real CT_small.dcm slice (128 x 128, 16 bit), as one CT series in transfer
    syntax ``syntax``; paths in slice order. UIDs are derived from ``uid_seed`` when given (random otherwise), so that
    a seeded collection has the same bytes, and its fuzzing hits the same elements, in every run."""
    folder.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))

    def uid(*keys: object) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, keys)]) if uid_seed is not None else generate_uid()

    series_uid = uid("series")
    x, y, z = (float(v) for v in source.ImagePositionPatient)
    paths = []
    for k in range(SLICES):
        ds = source.copy()
        ds.SeriesInstanceUID, ds.SeriesDescription = series_uid, "CT series"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("instance", k)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [x, y, z + 2.0 * k]
        ds.SliceLocation, ds.InstanceNumber = z + 2.0 * k, k + 1
        ds.file_meta.TransferSyntaxUID = syntax
        paths.append(folder / f"IM{k + 1:05d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def flip_header_bytes(path: Path, rng: np.random.Generator, n_bytes: int) -> None:
    """Replace ``n_bytes`` random bytes of the file's header (after the 128-byte preamble, before the pixel data)
    with random values."""
    data = bytearray(path.read_bytes())
    pixel_start = data.rfind(b"\xe0\x7f\x10\x00")  # tag (7FE0,0010) little endian: start of Pixel Data
    for offset in rng.integers(128, max(129, pixel_start), n_bytes):
        data[int(offset)] = int(rng.integers(256))
    path.write_bytes(bytes(data))


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for name, value in values.items():
        if value is None:
            del ds[name]
        else:
            setattr(ds, name, value)
    ds.save_as(path)


def _write_volume(array_kji: np.ndarray, path: Path, compress: bool = False) -> None:
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing((2.0, 2.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)


def _nifti_voxels() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(Path(nibabel_data_path) / "anatomical.nii"), sitk.sitkFloat32))


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def build_damaged_collection(root: Path, seed: int = 0, n_fuzzed: int = 40) -> DamagedCollection:
    """The clean CT series and NIfTI, ``n_fuzzed`` copies of the series with 1-3 slices' header bytes flipped, and
    one input of each other damage kind (see ``Case.kind``)."""
    rng = np.random.default_rng(seed)
    out = DamagedCollection(root)
    root.mkdir(parents=True, exist_ok=True)

    def add(name: str, kind: str, broken: bool = True, damaged: bool = True) -> Path:
        out.cases.append(Case(name, kind, broken, damaged))
        (root / name).mkdir()
        return root / name

    def series(folder: Path, syntax: str = ExplicitVRLittleEndian) -> list[Path]:
        return write_ct_series(folder, syntax, uid_seed=f"{seed}/{folder.name}")

    series(add(CLEAN_CT, "clean DICOM series", broken=False, damaged=False))
    anatomical = Path(nibabel_data_path) / "anatomical.nii"
    shutil.copy(anatomical, add(CLEAN_NIFTI, "clean NIfTI", broken=False, damaged=False))

    for n in range(n_fuzzed):
        paths = series(add(f"fuzz_{n:02d}", "DICOM header bytes flipped", broken=False))
        for k in rng.choice(SLICES, int(rng.integers(1, 4)), replace=False):
            flip_header_bytes(paths[int(k)], rng, int(rng.integers(1, 9)))

    series(add("deflated", "DICOM series, deflated transfer syntax (undamaged)", broken=False, damaged=False),
           DeflatedExplicitVRLittleEndian)
    paths = series(add("truncated_slice", "DICOM slice cut short"))
    _cut(paths[int(rng.integers(1, SLICES - 1))], 0.6)
    paths = series(add("truncated_deflated", "deflated DICOM slice cut short"), DeflatedExplicitVRLittleEndian)
    _cut(paths[int(rng.integers(1, SLICES - 1))], 0.6)
    for name, kind, values in (
            ("wrong_rows", "DICOM Rows larger than the pixel data", {"Rows": 256}),
            ("huge_rows", "DICOM Rows 65535", {"Rows": 65535}),
            ("wrong_bits", "DICOM BitsAllocated 32 for 16-bit data", {"BitsAllocated": 32}),
            ("missing_position", "DICOM ImagePositionPatient missing", {"ImagePositionPatient": None}),
            ("rotated_slice", "DICOM slice with another orientation", {"ImageOrientationPatient": [0, 1, 0, 0, 0, 1]}),
            ("wrong_syntax", "DICOM transfer syntax not a transfer syntax", {})):
        paths = series(add(name, kind))
        target = paths[int(rng.integers(1, SLICES - 1))]
        if name == "wrong_syntax":  # the Verification SOP Class UID, padded to the length of the syntax it replaces
            target.write_bytes(target.read_bytes().replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.1\0\0\0", 1))
        else:
            _edit(target, **values)
    for path in series(add("huge_spacing", "DICOM PixelSpacing 5661468 mm (a point lost)")):
        _edit(path, PixelSpacing=[5661468, 5661468])
    (add("empty_file", "empty .dcm file") / "empty.dcm").write_bytes(b"")
    (add("junk_file", "junk after a DICOM preamble") / "junk.dcm").write_bytes(
        b"\0" * 128 + b"DICM" + rng.bytes(400))

    voxels = _nifti_voxels()
    gz = add("cut_nifti_gz", "NIfTI .nii.gz cut in half") / "anatomical.nii.gz"
    gz.write_bytes(gzip.compress(anatomical.read_bytes(), mtime=0))
    _cut(gz, 0.5)
    shutil.copy(anatomical, add("cut_nifti", "NIfTI .nii cut short") / "anatomical.nii")
    _cut(root / "cut_nifti" / "anatomical.nii", 0.7)
    _write_volume(voxels, add("cut_nrrd_gz", "NRRD (gzip) cut in half") / "anatomical.nrrd", compress=True)
    _cut(root / "cut_nrrd_gz" / "anatomical.nrrd", 0.5)
    nan = voxels.copy()
    nan.ravel()[rng.choice(nan.size, int(0.032 * nan.size), replace=False)] = np.nan
    nan.ravel()[rng.choice(nan.size, 50, replace=False)] = np.inf
    _write_volume(nan, add("nan_inf", "volume with 3.2 % NaN/Inf voxels", broken=False) / "nan_inf.nrrd")
    mostly = voxels.copy()
    mostly[: int(0.6 * len(mostly))] = np.nan
    _write_volume(mostly, add("mostly_nan", "volume with 60 % NaN voxels") / "mostly_nan.nii.gz", compress=True)
    _write_volume(voxels[voxels.shape[0] // 2], add("image_2d", "2D image") / "slice.nii.gz")
    shutil.copy(Path(nibabel_data_path) / "example4d.nii.gz", add("image_4d", "4D image"))
    loop = add("symlink_loop", "folder holding a symlink to itself")
    (loop / "again").symlink_to(loop, target_is_directory=True)
    (loop / "notes.txt").write_text("a folder that links to itself")
    return out
