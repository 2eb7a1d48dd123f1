"""The fine-tuning cache: each case's image preprocessed exactly as for pre-training and its label map resampled
by nearest neighbour onto the same canonical grid.

Layout::

    manifest.json              format "gvsl-seg-cache", version, preprocessing settings, one entry per case
    <case>-<fp>.image.npy      uint16 [k, j, i] (D, H, W), normalised value = stored / 65535 (``gvsl.data.cache``)
    <case>-<fp>.label.npy      uint16 [k, j, i], the label map's values (0 background) on the same grid

Arrays are written atomically and the manifest last (as the pre-training cache); a second run reprocesses only
cases whose files (size, modification time) or preprocessing settings changed.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from gvsl.atomic_files import write_text_atomically
from gvsl.data.cache import STORAGE_MAX, ensure_writable, from_storage, to_storage, write_array
from gvsl.data.preprocess import PrepareConfig, preprocess_image
from gvsl.finetune.data import Case
from gvsl.io.geometry import grid_differences

MANIFEST = "manifest.json"
FORMAT = "gvsl-seg-cache"
VERSION = 1
_FLOAT_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64)


@dataclass
class CachedCase:
    """One preprocessed case; ``shape`` (D, H, W), ``spacing``/``origin`` (x, y, z) mm LPS, identity direction;
    ``values``: label values present (> 0) with their voxel counts; ``path`` (not stored): the cache folder."""

    name: str
    image: str
    label: str
    fingerprint: str
    modality: str
    shape: list[int]
    spacing: list[float]
    origin: list[float]
    normalisation: dict[str, Any]
    values: dict[str, int] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out

    def image_array(self) -> np.ndarray:
        """float32 (D, H, W) in [0, 1]."""
        return from_storage(np.load(self.path / self.image, mmap_mode="r"))

    def label_array(self) -> np.ndarray:
        """uint16 (D, H, W) label values."""
        return np.load(self.path / self.label)


def check_same_geometry(case: Case, image: sitk.Image, label: sitk.Image) -> None:
    """ValueError naming the case unless image and label share size, spacing, origin and direction."""
    problems = grid_differences(image, label)
    if problems:
        raise ValueError(f"case {case.name}: image and label do not share geometry ({'; '.join(problems)}); "
                         f"image {case.image}, label {case.label}")


def read_label(case: Case) -> sitk.Image:
    """The case's label map as a UInt16 image; ValueError naming the case for 2D, negative or non-integer labels."""
    label = sitk.ReadImage(str(case.label))
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"case {case.name}: label {case.label} is a {label.GetDimension()}D image with "
                         f"{label.GetNumberOfComponentsPerPixel()} component(s); a 3D label map is needed")
    values = sitk.GetArrayViewFromImage(label)
    if label.GetPixelID() in _FLOAT_TYPES and not np.array_equal(values, np.round(values)):
        raise ValueError(f"case {case.name}: label {case.label} holds non-integer values (is it an image rather "
                         "than a label map?)")
    if values.min() < 0 or values.max() > 65535:
        raise ValueError(f"case {case.name}: label values must be in 0..65535, found {values.min()}..{values.max()}")
    return sitk.Cast(label, sitk.sitkUInt16)


def read_case(case: Case) -> tuple[sitk.Image, sitk.Image]:
    """The case's image (float32) and label map (UInt16, ``read_label``), 3D on one grid; ValueError naming the case
    otherwise (SimpleITK's RuntimeError for an unreadable file)."""
    image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
    if image.GetDimension() != 3:
        raise ValueError(f"case {case.name}: image {case.image} is {image.GetDimension()}D; a 3D volume is needed")
    label = read_label(case)
    check_same_geometry(case, image, label)
    return image, label


def preprocess_case(case: Case, config: PrepareConfig, modality: str) -> tuple[sitk.Image, sitk.Image, Any]:
    """(image on the canonical grid in [0, 1], label on the same grid, ``Preprocessed``) of one case."""
    image, label = read_case(case)
    prepared = preprocess_image(image, modality, config)
    resampled = sitk.Resample(label, prepared.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt16)
    return prepared.image, resampled, prepared


def _settings(config: PrepareConfig, modality: str) -> dict[str, Any]:
    return {**config.preprocessing(), "modality": modality, "storage_max": STORAGE_MAX}


def _fingerprint(case: Case, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in (case.image, case.label):
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_manifest(cache_dir: Path) -> tuple[dict[str, Any], dict[str, CachedCase]]:
    path = cache_dir / MANIFEST
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, {}  # unreadable: rebuilt
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{cache_dir} holds another kind of cache; choose another --cache folder")
    cases = {}
    for item in data["cases"]:
        entry = CachedCase(**item)
        entry.path = cache_dir
        cases[entry.name] = entry
    return data["preprocessing"], cases


def _write_manifest(cache_dir: Path, settings: dict[str, Any], cases: list[CachedCase]) -> None:
    write_text_atomically(cache_dir / MANIFEST, json.dumps({"format": FORMAT, "version": VERSION,
                                                            "preprocessing": settings,
                                                            "cases": [c.to_json() for c in cases]}, indent=1))


def prepare_cases(cases: list[Case], cache_dir: Path | str, config: PrepareConfig,
                  modality: str = "auto") -> list[CachedCase]:
    """Preprocess (or reuse) every case into ``cache_dir``; returns them in order, ``path`` set.

    Raises ValueError naming the case for unreadable files, 2D images, non-integer labels or a geometry
    mismatch; ``gvsl.data.CacheWriteError`` when the folder cannot be written.
    """
    cache_dir = Path(cache_dir)
    ensure_writable(cache_dir)
    settings = _settings(config, modality)
    old_settings, old = _read_manifest(cache_dir)
    out = []
    for case in cases:
        fingerprint = _fingerprint(case, settings)
        previous = old.get(case.name)
        if old_settings == settings and previous is not None and previous.fingerprint == fingerprint and \
                (cache_dir / previous.image).is_file() and (cache_dir / previous.label).is_file():
            out.append(previous)
            continue
        try:
            image, label, prepared = preprocess_case(case, config, modality)
        except RuntimeError as exc:  # SimpleITK read errors
            raise ValueError(f"case {case.name}: cannot read {case.image} or {case.label}: {exc}") from exc
        labels = sitk.GetArrayFromImage(label)
        values, counts = np.unique(labels[labels > 0], return_counts=True)
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', case.name)}-{fingerprint[:8]}"
        write_array(cache_dir / f"{stem}.image.npy", to_storage(sitk.GetArrayViewFromImage(image)))
        write_array(cache_dir / f"{stem}.label.npy", labels)
        out.append(CachedCase(case.name, f"{stem}.image.npy", f"{stem}.label.npy", fingerprint, prepared.modality,
                              list(labels.shape), list(image.GetSpacing()), list(image.GetOrigin()),
                              prepared.normalisation._asdict(),
                              {str(int(v)): int(n) for v, n in zip(values, counts)}, cache_dir))
    _write_manifest(cache_dir, settings, out)
    referenced = {name for c in out for name in (c.image, c.label)}
    for path in cache_dir.glob("*.npy"):
        if path.name not in referenced:
            path.unlink(missing_ok=True)
    return out


def open_prepared(cache_dir: Path | str) -> list[CachedCase]:
    """The cases of an existing fine-tuning cache (as last prepared), ``path`` set; ValueError if there is none."""
    cases = list(_read_manifest(Path(cache_dir))[1].values())
    if not cases:
        raise ValueError(f"{cache_dir} holds no prepared fine-tuning case")
    return cases
