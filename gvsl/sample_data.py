"""Small, real-looking sample data: DICOM collections derived from the MNI ICBM152 2009 template.

Origin and licence of the source volumes: the MNI ICBM152 non-linear symmetric 2009a T1 template and its grey/white
matter probability maps, as shipped inside the nilearn wheel (``nilearn/datasets/data``). Copyright (C) 1993-2009
Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; free to use,
copy and distribute with this notice (see https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009).

Each subject gets its own smooth random deformation, small rotation/scale/shift, field of view and intensity
scaling, so pairs differ. The CT-like series is synthesised from the tissue maps (air, scalp, skull, CSF, grey and
white matter in Hounsfield units) and stored as CT does (unsigned values, rescale intercept -1024); the MR-like
series is the T1 template. Everything is written with pydicom as CT/MR Image Storage files in LPS.
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_MNI = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def load_mni(spacing: float = 2.0) -> dict[str, sitk.Image]:
    """The MNI152 2009 T1 template ("t1", 0-255) and grey/white matter maps ("gm", "wm", 0-1), float32 on an
    axis-aligned LPS grid of ``spacing`` mm (linear resampling of the 1 mm originals). Needs nilearn installed."""
    spec = find_spec("nilearn")  # locates the wheel without importing nilearn (seconds of imports)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the sample data needs nilearn: pip install 'gvsl[sample]'", name="nilearn")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    out = {}
    for name, file in _MNI.items():
        image = sitk.DICOMOrient(sitk.ReadImage(str(data / file), sitk.sitkFloat32), "LPS")
        size = [int(n * s / spacing) for n, s in zip(image.GetSize(), image.GetSpacing())]
        image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing] * 3,
                              image.GetDirection(), 0.0, sitk.sitkFloat32)
        out[name] = image / 255.0 if name != "t1" else image
    return out


def synthetic_ct(mni: dict[str, sitk.Image]) -> sitk.Image:
    """A CT-like head in HU from the MNI tissue maps: air -1000, scalp 40, skull 1100, CSF 8, GM 40, WM 28."""
    brain = mni["t1"] > 0
    spacing = mni["t1"].GetSpacing()[0]

    def dilate(mm: float) -> sitk.Image:
        return sitk.BinaryDilate(brain, [max(1, round(mm / spacing))] * 3)

    inner, outer, head = dilate(2.0), dilate(7.0), dilate(11.0)
    hu = 8.0 + 32.0 * mni["gm"] + 20.0 * mni["wm"]
    hu = sitk.Mask(hu, brain, outsideValue=8.0)
    hu = sitk.Mask(hu, inner | (outer == 0), outsideValue=1100.0)
    hu = sitk.Mask(hu, outer | (head == 0), outsideValue=40.0)
    return sitk.Mask(hu, head, outsideValue=-1000.0)


TISSUES = {1: "grey matter", 2: "white matter"}  # label value -> name in ``tissue_labels`` maps
TISSUE_COLORS = {1: (0.9, 0.6, 0.5), 2: (0.95, 0.95, 0.8)}
_ANATOMY = {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"}  # DICOM CID 7150
TISSUE_TERMINOLOGY = {  # SNOMED CT codes of the tissues (DICOM CID 7153), as label tables give them (gvsl.labels)
    1: {"category": _ANATOMY, "type": {"scheme": "SCT", "value": "389081007", "meaning": "Gray Matter"}},
    2: {"category": _ANATOMY, "type": {"scheme": "SCT", "value": "389080008", "meaning": "White Matter"}},
}


def tissue_labels(mni: dict[str, sitk.Image]) -> sitk.Image:
    """A uint8 label map on the MNI grid: 1 where grey matter is the likelier tissue with probability > 0.5, 2 where
    white matter is, 0 elsewhere (``TISSUES``)."""
    gm, wm = (sitk.GetArrayFromImage(mni[name]) for name in ("gm", "wm"))
    labels = np.zeros(gm.shape, np.uint8)
    labels[(gm > 0.5) & (gm >= wm)] = 1
    labels[(wm > 0.5) & (wm > gm)] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(mni["gm"])
    return image


def random_warp(reference: sitk.Image, rng: np.random.Generator, *, max_rotation_deg: float = 6.0,
                max_shift_mm: float = 5.0, scale_range: float = 0.08, max_displacement_mm: float = 4.0
                ) -> sitk.Transform:
    """A smooth random transform (output physical point -> template point, LPS mm): an affine around the
    reference's centre composed with a displacement field of coarse random values, linearly interpolated."""
    centre = reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()])
    affine = sitk.Euler3DTransform(centre, *np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3)),
                                   rng.uniform(-max_shift_mm, max_shift_mm, 3))
    scaled = sitk.AffineTransform(affine.GetMatrix(), affine.GetTranslation(), centre)
    scaled.Scale(tuple(rng.uniform(1 - scale_range, 1 + scale_range, 3)))
    coarse = sitk.GetImageFromArray(rng.uniform(-max_displacement_mm, max_displacement_mm, (5, 5, 5, 3)),
                                    isVector=True)
    extent = np.asarray(reference.GetSize()) * np.asarray(reference.GetSpacing())
    coarse.SetSpacing(tuple(extent / 4))
    coarse.SetOrigin(reference.GetOrigin())
    field = sitk.DisplacementFieldTransform(sitk.Cast(coarse, sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([scaled, field])


def write_dicom_series(image: sitk.Image, out_dir: Path | str, *, modality: str, patient_id: str,
                       study_uid: str, series_uid: str | None = None, description: str = "",
                       study_description: str = "", series_number: int = 1, rescale_intercept: float = 0.0,
                       image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"), prefix: str = "IM",
                       first_instance: int = 1, patient_name: str = "Sample^Subject",
                       birth_date: str = "19700101", frame_of_reference_uid: str | None = None) -> list[Path]:
    """Write a 3D image (physical values, e.g. HU for CT) as one CT/MR Image Storage file per slice.

    Slice k of the image (array index [k]) becomes file ``{prefix}{first_instance + k:05d}.dcm`` with
    ImagePositionPatient = the physical point of voxel (0, 0, k), ImageOrientationPatient = the first two
    direction columns, PixelSpacing = (row spacing, column spacing) = (spacing y, spacing x). Values are stored as
    uint16 ``round(value - rescale_intercept)`` (slope 1). ``frame_of_reference_uid``: the patient coordinate
    system the positions are in (FrameOfReferenceUID; a new one by default, series on one subject's grid share
    one). Returns the paths in slice order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    stored = np.clip(np.rint(sitk.GetArrayFromImage(image) - rescale_intercept), 0, 65535).astype(np.uint16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    ds = _base_dataset(modality, patient_id, patient_name, birth_date, study_uid, series_uid, study_description)
    ds.update({
        "SeriesDescription": description, "SeriesNumber": series_number, "ImageType": list(image_type),
        "ImageOrientationPatient": [round(float(v), 6) for v in (*direction[:, 0], *direction[:, 1])],
        "PixelSpacing": [round(spacing[1], 6), round(spacing[0], 6)], "SliceThickness": round(spacing[2], 6),
        "Rows": stored.shape[1], "Columns": stored.shape[2], "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
        "PixelRepresentation": 0, "RescaleIntercept": rescale_intercept, "RescaleSlope": 1,
        "FrameOfReferenceUID": frame_of_reference_uid or generate_uid(), "PositionReferenceIndicator": "",
    })
    paths = []
    for k in range(stored.shape[0]):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = first_instance + k
        ds.ImagePositionPatient = [round(v, 6) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.PixelData = stored[k].tobytes()
        paths.append(out_dir / f"{prefix}{first_instance + k:05d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _base_dataset(modality: str, patient_id: str, patient_name: str, birth_date: str, study_uid: str,
                  series_uid: str, study_description: str) -> pydicom.Dataset:
    """The tags shared by all slices of a series."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.update({"Modality": modality, "PatientID": patient_id, "PatientName": patient_name,
               "PatientBirthDate": birth_date, "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
               "StudyDescription": study_description,
               "StudyDate": datetime.date(2020, 1, 1).strftime("%Y%m%d")})
    if modality == "CT":
        ds.RescaleType = "HU"
    return ds


def write_sample_collection(out_dir: Path | str, *, n_subjects: int = 4, shape_scale: float = 0.4,
                            seed: int = 0) -> Path:
    """Write a DICOM collection of ``n_subjects`` patients, each one study with a CT-like and an MR-like series.

    ``shape_scale`` is the number of voxels per side relative to the 1 mm MNI grid (0.4: about 70-80 voxels per
    side of 2.5 mm; each subject's field of view is cropped a little at random). Layout:
    ``out_dir/subject-NN/{ct,mr}/IMxxxxx.dcm``. Returns ``out_dir``. Takes about a second per subject.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    mni = load_mni(spacing=min(2.0, 1.0 / shape_scale))
    templates = {"CT": synthetic_ct(mni), "MR": mni["t1"] * 4.0}
    for n in range(n_subjects):
        grid = _subject_grid(mni["t1"], 1.0 / shape_scale, rng)
        warp = random_warp(grid, rng)
        study_uid, frame_uid = generate_uid(), generate_uid()
        patient_id = f"GVSL-SAMPLE-{n + 1:03d}"
        for number, (modality, template) in enumerate(templates.items(), start=1):
            background = -1000.0 if modality == "CT" else 0.0
            volume = sitk.Resample(template, grid, warp, sitk.sitkLinear, background, sitk.sitkFloat32)
            if modality == "MR":
                volume = volume * float(rng.uniform(0.7, 1.4))
            write_dicom_series(volume, out_dir / f"subject-{n + 1:02d}" / modality.lower(), modality=modality,
                               patient_id=patient_id, patient_name=f"Sample^Subject{n + 1}", study_uid=study_uid,
                               description=f"Sample {modality} head", study_description="GVSL sample head",
                               series_number=number, rescale_intercept=-1024.0 if modality == "CT" else 0.0,
                               frame_of_reference_uid=frame_uid)
    return out_dir


def _subject_grid(template: sitk.Image, spacing: float, rng: np.random.Generator) -> sitk.Image:
    """An axis-aligned LPS grid of ``spacing`` mm covering the template's extent, cropped by 0-10 % per side."""
    extent = np.asarray(template.GetSize()) * np.asarray(template.GetSpacing())
    low, high = rng.uniform(0.0, 0.1, 3) * extent, rng.uniform(0.0, 0.1, 3) * extent
    size = [int(n) for n in (extent - low - high) // spacing]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin(tuple(np.asarray(template.GetOrigin()) + low))
    return grid


class SampleHead(NamedTuple):
    """One head of ``write_sample_heads``: its files and its known geometry."""

    volume: Path
    labels: Path
    to_template: sitk.Transform  # the head's physical point (LPS mm) -> the same anatomy's MNI template point


def write_sample_heads(out_dir: Path | str, *, n_subjects: int = 3, spacing: float = 4.0, seed: int = 0
                       ) -> list[SampleHead]:
    """Write ``n_subjects`` warped copies of the MNI T1 head with their tissue label maps, as NRRD files.

    Layout: ``out_dir/volumes/head-NN.nrrd`` (T1, float32) and ``out_dir/labels/head-NN.nrrd`` (uint8,
    ``tissue_labels``) with its label table beside it (``head-NN.labels.json``, SNOMED CT codes included); each
    subject on its own axis-aligned LPS grid of ``spacing`` mm, as in ``write_sample_collection``. Because each
    head's warp is known, two heads' true correspondence is too: fixed point p matches the moving point q with
    ``moving.to_template(q) == fixed.to_template(p)``.
    """
    from gvsl.labels import make_label_table, sidecar_path, write_label_table

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    mni = load_mni(spacing=min(2.0, spacing))
    labels = tissue_labels(mni)
    table = make_label_table(TISSUES, TISSUES, TISSUE_COLORS, TISSUE_TERMINOLOGY)
    paths = []
    for n in range(n_subjects):
        grid = _subject_grid(mni["t1"], spacing, rng)
        warp = random_warp(grid, rng)
        volume_path = out_dir / "volumes" / f"head-{n + 1:02d}.nrrd"
        labels_path = out_dir / "labels" / f"head-{n + 1:02d}.nrrd"
        for path in (volume_path, labels_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Resample(mni["t1"], grid, warp, sitk.sitkLinear, 0.0, sitk.sitkFloat32), str(volume_path))
        sitk.WriteImage(sitk.Resample(labels, grid, warp, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8),
                        str(labels_path), useCompression=True)
        write_label_table(table, sidecar_path(labels_path))
        paths.append(SampleHead(volume_path, labels_path, warp))
    return paths


class TrueMatches(NamedTuple):
    """Points of a fixed head's brain and their true matches in a moving head (``brain_point_matches``).

    ``fixed_lps``: (N, 3) fixed physical points, LPS mm; ``template_mm``: (N, 3) where they and their true matches
    lie in the MNI template; ``moving``: the moving head."""

    fixed_lps: np.ndarray
    template_mm: np.ndarray
    moving: SampleHead

    def errors_mm(self, transform: sitk.Transform) -> np.ndarray:
        """(N,) how far a fixed -> moving transform (LPS mm) sends each point from its true match:
        ``|moving.to_template(T(p)) - fixed.to_template(p)|`` in template mm."""
        found = np.asarray([self.moving.to_template.TransformPoint(transform.TransformPoint(p))
                            for p in self.fixed_lps])
        return np.linalg.norm(found - self.template_mm, axis=1)

    def with_counterpart(self, margin_voxels: int) -> np.ndarray:
        """(N,) bool: the points whose true match lies in the moving scan (``in_moving_scan``), so that a field of
        view that cuts the brain in one head and not in the other does not count points no method can match."""
        return in_moving_scan(self.template_mm, self.moving, margin_voxels)


def brain_point_matches(fixed: SampleHead, moving: SampleHead, points: int = 2000, seed: int = 0) -> TrueMatches:
    """Up to ``points`` random labelled voxels of the fixed head (drawn with ``seed``) and their true matches."""
    labels = sitk.ReadImage(str(fixed.labels))
    index = np.argwhere(sitk.GetArrayViewFromImage(labels) > 0)[:, ::-1]  # (x, y, z)
    index = index[np.random.default_rng(seed).choice(len(index), min(points, len(index)), replace=False)]
    fixed_lps = np.asarray([labels.TransformIndexToPhysicalPoint([int(i) for i in voxel]) for voxel in index])
    template_mm = np.asarray([fixed.to_template.TransformPoint(p) for p in fixed_lps])
    return TrueMatches(fixed_lps, template_mm, moving)


def correspondence_errors_mm(fixed: SampleHead, moving: SampleHead, transform: sitk.Transform, points: int = 2000,
                             seed: int = 0) -> np.ndarray:
    """``brain_point_matches(fixed, moving, points, seed).errors_mm(transform)``: one transform's errors, mm."""
    return brain_point_matches(fixed, moving, points, seed).errors_mm(transform)


def in_moving_scan(template_points_mm: np.ndarray, moving: SampleHead, margin_voxels: int) -> np.ndarray:
    """Which template points (N, 3) mm have their match inside the moving head's scan, ``margin_voxels`` or more from
    its faces: within one voxel (the grid's largest spacing) of a voxel centre of the moving grid without its outer
    ``margin_voxels`` layers, mapped to the template by ``moving.to_template``. Returns (N,) bool."""
    from scipy.spatial import cKDTree

    image = sitk.ReadImage(str(moving.volume))
    inner = image[tuple(slice(margin_voxels, size - margin_voxels) for size in image.GetSize())]
    field = sitk.TransformToDisplacementField(moving.to_template, sitk.sitkVectorFloat64, inner.GetSize(),
                                              inner.GetOrigin(), inner.GetSpacing(), inner.GetDirection())
    shape_xyz = inner.GetSize()
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape_xyz), indexing="ij"), axis=-1).reshape(-1, 3)
    direction = np.asarray(inner.GetDirection()).reshape(3, 3)
    centres_lps = np.asarray(inner.GetOrigin()) + (index * np.asarray(inner.GetSpacing())) @ direction.T
    displacement = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3).reshape(-1, 3)  # (z, y, x, 3) -> x-major
    distance, _ = cKDTree(centres_lps + displacement).query(np.asarray(template_points_mm, dtype=float))
    return distance <= max(image.GetSpacing())
