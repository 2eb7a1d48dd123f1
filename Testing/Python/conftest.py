"""Shared fixtures: small DICOM collections built from real public images, generated once per test session.

Origin and licence of the data: the MNI ICBM152 2009 template and tissue maps inside the nilearn wheel (see
``gvsl.sample_data``), and the real DICOM files ``CT_small.dcm`` / ``MR_small.dcm`` inside the pydicom wheel
(pydicom test files, MIT licence). Nothing generated here is committed.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gvsl.io import SeriesInfo
from gvsl.sample_data import load_mni, synthetic_ct, write_dicom_series, write_sample_collection

MESSY_SPACING = (2.0, 2.0, 2.0)  # prepare the messy collection at 2 mm: same code paths, 8x fewer voxels


@dataclass
class Messy:
    """A messy collection: ``root``, and per series name (see ``series_name``) the expected outcome:
    ``usable`` names, and ``skipped`` name -> text the reason must contain."""

    root: Path
    usable: set[str]
    skipped: dict[str, str]
    files: dict[str, int]  # name -> expected number of files, for series whose files are spread or interleaved


def series_name(record: SeriesInfo) -> str:
    """A readable name: ``patient/description[#part]`` for DICOM series, the file name otherwise."""
    if not record.series_uid:
        return Path(record.files[0]).name
    part = "#" + record.key.rsplit(".", 1)[1] if "." in record.key else ""
    return f"{record.patient_id}/{record.description}{part}"


def _grid(size, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), centre=(0.0, -18.0, 18.0)) -> sitk.Image:
    """An empty image of ``size`` voxels, centred on ``centre`` (LPS mm; the MNI brain centre by default)."""
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection([float(d) for d in direction])
    half = np.asarray(direction, float).reshape(3, 3) @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    grid.SetOrigin(tuple(np.asarray(centre) - half))
    return grid


def _write(template: sitk.Image, grid: sitk.Image, out: Path, **tags) -> list[Path]:
    modality = tags.setdefault("modality", "CT")
    background = -1000.0 if modality == "CT" else 0.0
    image = sitk.Resample(template, grid, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32)
    tags.setdefault("rescale_intercept", -1024.0 if modality == "CT" else 0.0)
    return write_dicom_series(image, out, **tags)


def _write_sr(path: Path, patient_id: str, study_uid: str) -> None:
    """A Basic Text SR object: no pixels."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.update({"Modality": "SR", "PatientID": patient_id, "StudyInstanceUID": study_uid,
               "SeriesInstanceUID": generate_uid(), "SeriesDescription": "Report"})
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_colour(path: Path) -> None:
    """pydicom's real CT_small.dcm turned into an 8-bit RGB image (a screenshot-like secondary series)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    grey = ds.pixel_array.astype(np.float32)
    grey = np.rint(255 * (grey - grey.min()) / np.ptp(grey)).astype(np.uint8)
    ds.update({"PatientID": "MESSY", "SeriesInstanceUID": generate_uid(), "SeriesDescription": "Colour",
               "SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0,
               "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 0})
    ds.PixelData = np.repeat(grey[..., None], 3, axis=2).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_enhanced_mr(image: sitk.Image, path: Path, **tags) -> None:
    """An Enhanced MR Image Storage file: all slices as frames, geometry in the functional groups."""
    stored = np.clip(np.rint(sitk.GetArrayFromImage(image)), 0, 65535).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.update({"Modality": "MR", "SeriesInstanceUID": generate_uid(), "Rows": stored.shape[1],
               "Columns": stored.shape[2], "NumberOfFrames": stored.shape[0], "SamplesPerPixel": 1,
               "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
               "PixelRepresentation": 0, "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"], **tags})
    measures, orientation = pydicom.Dataset(), pydicom.Dataset()
    measures.PixelSpacing = [image.GetSpacing()[1], image.GetSpacing()[0]]
    measures.SliceThickness = image.GetSpacing()[2]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation.ImageOrientationPatient = [*direction[:, 0], *direction[:, 1]]
    shared = pydicom.Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(stored.shape[0]):
        position, frame = pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = list(image.TransformIndexToPhysicalPoint((0, 0, k)))
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def build_messy_collection(root: Path) -> Messy:
    """Two sample subjects plus one patient ("MESSY") with every awkward case of a real PACS export."""
    write_sample_collection(root / "pacs", n_subjects=2, shape_scale=0.3)
    usable = {f"GVSL-SAMPLE-00{n}/Sample {m} head" for n in (1, 2) for m in ("CT", "MR")}
    mni = load_mni(3.0)
    ct, t1 = synthetic_ct(mni), mni["t1"] * 4.0
    study = generate_uid()
    tags = dict(patient_id="MESSY", study_uid=study, study_description="Messy study")
    skipped, files = {}, {}

    rotation = sitk.Euler3DTransform((0, 0, 0), 0.35, -0.1, 0.2).GetMatrix()
    _write(t1, _grid((40, 48, 14), (2.5, 2.5, 6.0), rotation), root / "mr_oblique",
           modality="MR", description="Oblique T1", **tags)
    usable.add("MESSY/Oblique T1")

    t1_grid = sitk.Resample(t1, _grid((24, 28, 12), (4.0, 4.0, 5.0)), sitk.Transform(), sitk.sitkLinear, 0.0)
    _write_enhanced_mr(t1_grid, root / "enhanced" / "mr.dcm", SeriesDescription="Enhanced T1", PatientID="MESSY",
                       StudyInstanceUID=study)
    usable.add("MESSY/Enhanced T1")

    mixed_uid = generate_uid()  # one series holding an axial and a sagittal stack: split into two volumes
    _write(ct, _grid((32, 32, 12), (4.0, 4.0, 4.0)), root / "mixed", description="Mixed", series_uid=mixed_uid,
           prefix="AX", **tags)
    _write(ct, _grid((32, 32, 12), (4.0, 4.0, 4.0), (0, 0, -1, 1, 0, 0, 0, -1, 0)), root / "mixed",
           description="Mixed", series_uid=mixed_uid, prefix="SAG", first_instance=13, **tags)
    usable |= {"MESSY/Mixed#1", "MESSY/Mixed#2"}

    small = _grid((32, 32, 14), (4.0, 4.0, 4.0))
    for name, modality in (("Interleaved A", "CT"), ("Interleaved B", "MR")):  # mixed in one folder, shuffled names
        paths = _write(ct if modality == "CT" else t1, small, root / "tmp" / name, modality=modality,
                       description=name, **tags)
        files[f"MESSY/{name}"] = len(paths)
        usable.add(f"MESSY/{name}")
    mixed_names = sorted((root / "tmp").rglob("*.dcm"))
    random.Random(0).shuffle(mixed_names)
    (root / "one_folder").mkdir()
    for n, path in enumerate(mixed_names):
        path.rename(root / "one_folder" / f"F{n:04d}")
    shutil.rmtree(root / "tmp")

    for n, path in enumerate(_write(ct, small, root / "cd1" / "split", description="Two folders", **tags)):
        if n % 2:  # odd slices on a second CD
            (root / "cd2").mkdir(exist_ok=True)
            path.rename(root / "cd2" / path.name)
    usable.add("MESSY/Two folders")
    files["MESSY/Two folders"] = 14

    _write(ct, _grid((32, 32, 3), (4.0, 4.0, 4.0)), root / "scout", description="Scout",
           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), **tags)
    skipped["MESSY/Scout"] = "localizer"
    paths = _write(ct, small, root / "truncated", description="Truncated", **tags)
    paths[5].write_bytes(paths[5].read_bytes()[:-1000])
    skipped["MESSY/Truncated"] = "truncated file"
    paths = _write(t1, small, root / "gap", modality="MR", description="Gap", **tags)
    paths[7].unlink()
    skipped["MESSY/Gap"] = "irregular slice spacing"
    _write_sr(root / "reports" / "report.dcm", "MESSY", study)
    skipped["MESSY/Report"] = "non-image object"

    _write_colour(root / "colour" / "rgb.dcm")
    skipped["MESSY/Colour"] = "colour image"
    for name in ("CT_small.dcm", "MR_small.dcm"):  # real DICOM files from the pydicom wheel: single 2D images
        shutil.copy(get_testdata_file(name), root / name)
        ds = pydicom.dcmread(root / name, stop_before_pixels=True)
        skipped[f"{ds.PatientID}/{ds.get('SeriesDescription', '')}"] = "single 2D image"
    (root / "junk").mkdir()
    (root / "junk" / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(random.Random(1).randbytes(300)))
    skipped["corrupt.dcm"] = "corrupt"
    (root / "junk" / "notes.txt").write_text("not an image")

    (root / "volumes").mkdir()
    sitk.WriteImage(mni["t1"], str(root / "volumes" / "t1.nii.gz"))
    usable.add("t1.nii.gz")
    sitk.WriteImage(mni["t1"][:, :, 30], str(root / "volumes" / "slice.nii.gz"))
    skipped["slice.nii.gz"] = "2D image"
    holes = sitk.GetArrayFromImage(ct)
    holes[:5] = np.nan  # NaNs in the first slices: replaced, noted
    nan_image = sitk.GetImageFromArray(holes)
    nan_image.CopyInformation(ct)
    sitk.WriteImage(nan_image, str(root / "volumes" / "nan_ct.nrrd"))
    usable.add("nan_ct.nrrd")
    return Messy(root, usable, skipped, files)


@pytest.fixture(scope="session")
def messy(tmp_path_factory) -> Messy:
    return build_messy_collection(tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """A cache of 4 sample volumes (2 subjects x CT/MR) at 2 mm: about 85-100 voxels per side."""
    from gvsl.data import PrepareConfig, prepare_cache

    root = tmp_path_factory.mktemp("sample")
    write_sample_collection(root / "dicom", n_subjects=2, shape_scale=0.3, seed=1)
    prepare_cache(root / "dicom", root / "cache", config=PrepareConfig(target_spacing=(2.0, 2.0, 2.0)),
                  progress=False)
    return root / "cache"


@pytest.fixture
def scene():
    """A real MRML scene from the ``slicer-core`` wheel, set up as Slicer sets it up (subject hierarchy, the
    segmentation converters); the test skips when ``slicer`` with ``vtkMRMLScene`` is not importable."""
    slicer = pytest.importorskip("slicer", reason="needs Slicer's MRML: pip install slicer-core")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no vtkMRMLScene (install slicer-core)")
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules() == ():  # Slicer's Segmentations module registers these at start-up
        for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                     slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
            factory.RegisterConverterRule(rule())
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # created once, as in Slicer
    return scene
