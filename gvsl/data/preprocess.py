"""Preprocessing of one volume: canonical grid, target spacing, intensities in [0, 1].

Reusable outside the cache (matching, segmentation): ``preprocess_image(image, modality, config)``.

Canonical grid, exactly: (1) ``sitk.DICOMOrient(image, "LPS")`` permutes/flips the axes so the direction matrix is
the closest one to identity (exactly identity for axis-aligned data; no interpolation); (2) the output grid has
identity direction, the target spacing, and covers the physical bounding box of the input's voxel boxes (the
corners of the continuous index box [-0.5, n - 0.5] per axis, mapped to LPS): origin = box minimum + half the target
spacing, size = round(box extent / target spacing); (3) the input is resampled onto it with linear interpolation,
points outside the input getting the value that normalises to 0. For axis-aligned input whose spacing already equals
the target, the output grid is the input grid.

Normalisation maps a physical value v to clip((v - lo) / (hi - lo), 0, 1): CT uses a fixed HU window (default
[-1024, 1024], i.e. the paper's raw [0, 2048] / 2048 for data stored with intercept -1024); MR uses robust
percentiles of the input's voxel values (default 0.5 and 99.5).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from ..io import ScanOptions

#: Most voxels a canonical grid may have (2^31: 8 GiB of float32, far beyond any scan at a sensible spacing).
MAX_GRID_VOXELS = 2**31
_PERCENTILE_SAMPLES = 4_000_000  # percentiles of a regular subsample of at most this many voxels (speed)


@dataclass
class PrepareConfig:
    """What ``prepare`` keeps (``selection``) and how it preprocesses it (the other fields).

    ``target_spacing``: output voxel size in mm, (x, y, z). ``ct_window``: HU mapped to 0 and 1.
    ``mr_percentiles``: percentiles of each MR volume mapped to 0 and 1.
    """

    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ct_window: tuple[float, float] = (-1024.0, 1024.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    selection: ScanOptions = field(default_factory=ScanOptions)

    def preprocessing(self) -> dict[str, Any]:
        """The settings that change cached arrays (recorded in the manifest; a change invalidates the cache)."""
        out = asdict(self)
        out.pop("selection")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


class Normalisation(NamedTuple):
    """Physical value v -> clip((v - lo) / (hi - lo), 0, 1). ``method``: "window" (CT) or "percentile" (MR)."""

    method: str
    lo: float
    hi: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(values, np.float32) - self.lo) / (self.hi - self.lo), 0.0, 1.0)


class Preprocessed(NamedTuple):
    """``image``: float32 in [0, 1] on the canonical grid (identity direction, LPS, target spacing);
    ``normalisation``: how its values relate to the input's physical values; ``modality``: "CT" or "MR";
    ``non_finite``: how many NaN/Inf input voxels were replaced by ``normalisation.lo``."""

    image: sitk.Image
    normalisation: Normalisation
    modality: str
    non_finite: int


def infer_modality(values: np.ndarray) -> str:
    """"CT" when the volume holds air-like values in HU (1st percentile below -500), else "MR"."""
    return "CT" if float(np.percentile(_subsample(values), 1.0)) < -500.0 else "MR"


def normalisation_for(values: np.ndarray, modality: str, config: PrepareConfig) -> Normalisation:
    """The CT window, or the MR percentiles of ``values`` (finite values only)."""
    if modality == "CT":
        return Normalisation("window", *map(float, config.ct_window))
    lo, hi = (float(v) for v in np.percentile(_subsample(values), config.mr_percentiles))
    if hi <= lo:
        raise ValueError(f"constant image (value {lo:g} between percentiles {config.mr_percentiles}): nothing to learn")
    return Normalisation("percentile", lo, hi)


def _subsample(values: np.ndarray) -> np.ndarray:
    flat = values.ravel()
    flat = flat[:: max(1, flat.size // _PERCENTILE_SAMPLES)]
    return flat[np.isfinite(flat)]


def canonical_grid(image: sitk.Image, spacing: tuple[float, float, float]) -> sitk.Image:
    """An empty image with identity direction and ``spacing`` (mm) covering ``image``'s physical extent (LPS).

    Raises ValueError when that grid would hold more than ``MAX_GRID_VOXELS`` (a damaged voxel size), before
    allocating it.
    """
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in itertools.product(*[(-0.5, n - 0.5) for n in size])])
    low, high = corners.min(axis=0), corners.max(axis=0)
    spacing_arr = np.asarray(spacing, float)
    grid_size = [max(1, int(n)) for n in np.rint((high - low) / spacing_arr)]
    if float(np.prod(grid_size, dtype=float)) > MAX_GRID_VOXELS:
        raise ValueError(f"the scan spans {' x '.join(f'{e:.0f}' for e in high - low)} mm: "
                         f"{'x'.join(map(str, grid_size))} voxels at {'x'.join(f'{v:g}' for v in spacing_arr)} mm "
                         "(damaged voxel size?)")
    grid = sitk.Image(grid_size, sitk.sitkUInt8)
    grid.SetSpacing(tuple(spacing_arr))
    grid.SetOrigin(tuple(low + spacing_arr / 2))
    return grid


def preprocess_image(image: sitk.Image, modality: str, config: PrepareConfig | None = None) -> Preprocessed:
    """Reorient, resample (linear) and normalise a 3D image in physical units (CT in HU) — see the module doc.

    ``modality``: "CT", "MR", or "" / "auto" to infer it from the intensities. NaN/Inf voxels are replaced by the
    value that normalises to 0; an image with no finite voxel raises ``ValueError``.
    """
    config = config or PrepareConfig()
    if image.GetDimension() != 3:
        raise ValueError(f"{image.GetDimension()}D image: a 3D volume is needed")
    image = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "LPS")
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    non_finite = int(finite.size - np.count_nonzero(finite))
    if non_finite == finite.size:
        raise ValueError("no finite voxel value (all NaN/Inf)")
    modality = modality.upper() if modality and modality.lower() != "auto" else infer_modality(values)
    norm = normalisation_for(values, modality, config)
    if non_finite:
        clean = sitk.GetImageFromArray(np.where(finite, values, np.float32(norm.lo)))
        clean.CopyInformation(image)
        image = clean
    grid = canonical_grid(image, config.target_spacing)
    resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, norm.lo, sitk.sitkFloat32)
    normalised = sitk.IntensityWindowing(resampled, norm.lo, norm.hi, 0.0, 1.0)
    return Preprocessed(normalised, norm, modality, non_finite)
