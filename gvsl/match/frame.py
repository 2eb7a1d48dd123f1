"""Placing two volumes in one frame, on one network grid, before the network sees them.

Each image is preprocessed exactly as for training (``preprocess_image``: canonical grid with identity direction in
LPS, normalisation to [0, 1]). The initial alignment (``gvsl.data.alignment``: centres of mass, or physical
identity) gives a translation ``initial`` from fixed LPS points to moving LPS points. The *frame* is the fixed
image's physical space; its *grid* has identity direction and the network spacing, is aligned voxel for voxel
with the fixed canonical grid, covers the fixed volume and the moving volume as placed by ``initial``, and has a
multiple of 16 voxels per axis. Both network images live on that grid: the fixed image as it is, the moving image
sampled at ``initial(x)`` for each grid point x (cubic B-spline, 0 outside: ``on_grid``). So a network that returns
the identity reproduces ``initial`` exactly, and everything it adds is relative to it.

The network spacing is the training spacing, or the scans' own resolution where that is coarser
(``MatchConfig.coarsen_to_scans``). There is no sliding window: the affine head needs global context, so a frame
larger than ``max_size_xyz`` at that spacing is seen whole at a coarser spacing, that spacing times one factor for all
axes.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.data import PrepareConfig, Preprocessed, preprocess_image
from gvsl.data.alignment import centre_of_mass_mm, initial_shift_mm
from gvsl.match.config import MatchConfig
from gvsl.networks.backbone import SIZE_MULTIPLE


class NetworkInputs(NamedTuple):
    """Both volumes on the frame grid, as the network sees them.

    ``fixed`` / ``moving``: float32 in [0, 1] on the frame grid (identity direction, LPS, network spacing), the
    moving one sampled through ``initial``; ``initial``: fixed LPS point -> moving LPS point before the network (a
    translation); ``fixed_region_dhw``: array slices (d, h, w) of the grid that the fixed volume covers (the rest is
    padding); ``preprocessed``: (fixed, moving) preprocessing results on their canonical grids.
    """

    fixed: sitk.Image
    moving: sitk.Image
    initial: sitk.TranslationTransform
    fixed_region_dhw: tuple[slice, slice, slice]
    preprocessed: tuple[Preprocessed, Preprocessed]


def image_centre_of_mass_mm(image: sitk.Image) -> np.ndarray:
    """``centre_of_mass_mm`` of a preprocessed (identity-direction) image."""
    return centre_of_mass_mm(sitk.GetArrayViewFromImage(image), image.GetSpacing(), image.GetOrigin())


def voxel_box_mm(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) corners (x, y, z mm) of the axis-aligned box around an image's voxel boxes."""
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in itertools.product(*[(-0.5, n - 0.5) for n in image.GetSize()])])
    return corners.min(axis=0), corners.max(axis=0)


def frame_box_mm(fixed: sitk.Image, moving: sitk.Image, shift_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box of the frame: the fixed image's box and the moving image's box moved back by ``shift_mm``."""
    (f_lo, f_hi), (m_lo, m_hi) = voxel_box_mm(fixed), voxel_box_mm(moving)
    return np.minimum(f_lo, m_lo - shift_mm), np.maximum(f_hi, m_hi - shift_mm)


def frame_grid(fixed: sitk.Image, box: tuple[np.ndarray, np.ndarray], multiple: int = SIZE_MULTIPLE) -> sitk.Image:
    """An empty grid with ``fixed``'s spacing and voxel alignment (identity direction) covering ``box``, each size
    rounded up to ``multiple``, the volume centred in it (an extra voxel after)."""
    spacing = np.asarray(fixed.GetSpacing(), float)
    origin = np.asarray(fixed.GetOrigin(), float)
    first = np.floor((box[0] + spacing / 2 - origin) / spacing + 1e-6)  # first voxel whose centre is in the box
    last = np.ceil((box[1] - spacing / 2 - origin) / spacing - 1e-6)
    count = (last - first + 1).astype(int)
    size = -(-count // multiple) * multiple
    first -= (size - count) // 2
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(spacing))
    grid.SetOrigin(tuple(origin + first * spacing))
    return grid


def spacing_factor(extent_mm: np.ndarray, spacing: Sequence[float], max_size_xyz: Sequence[int]) -> float:
    """How much coarser than ``spacing`` the grid must be for ``extent_mm`` (x, y, z) to fit ``max_size_xyz``."""
    # One voxel of slack per axis: the rounded, padded size then stays within the cap.
    return float(max(1.0, np.max((extent_mm / np.asarray(spacing, float) + 1) / np.asarray(max_size_xyz, float))))


def on_grid(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
            smoothing_mm: float = 0.0) -> sitk.Image:
    """A [0, 1] image resampled onto ``grid`` at ``transform(x)`` (cubic B-spline, 0 outside; it may overshoot
    [0, 1] slightly at sharp edges), after a Gaussian of ``smoothing_mm`` (standard deviation) when that is positive
    (downsampling).

    Cubic, not trilinear: a grid half a voxel off the image's own voxels would average neighbours, blurring one scan
    of a pair and not the other. Measured with trilinear → cubic (benchmarks/RESULTS.md): the refined known-warp head
    0.49 → 0.39 mm, between brains 0.4770 → 0.4783 Dice, sample-head tuning seeds 0.72 → 0.57 and 0.75 → 0.60 mm."""
    if smoothing_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, smoothing_mm)
    return sitk.Resample(image, grid, transform or sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)


def region_dhw(grid: sitk.Image, image: sitk.Image) -> tuple[slice, slice, slice]:
    """Array slices (d, h, w) of ``grid`` whose voxel centres lie in ``image``'s box."""
    low, high = voxel_box_mm(image)
    spacing, origin = np.asarray(grid.GetSpacing()), np.asarray(grid.GetOrigin())
    start = np.clip(np.ceil((low - origin) / spacing - 1e-6), 0, None).astype(int)
    stop = np.minimum(np.floor((high - origin) / spacing + 1e-6).astype(int) + 1, grid.GetSize())
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))


def prepare_network_inputs(fixed: sitk.Image, moving: sitk.Image, fixed_modality: str, moving_modality: str,
                           config: MatchConfig) -> NetworkInputs:
    """Preprocess both images as in training and place them on one frame grid (see the module doc).

    Raises ValueError naming the image ("fixed image: ...") when one is not a usable 3D volume.
    """
    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, sitk.Image):
            raise ValueError(f"{name} image must be a SimpleITK image, got {type(image).__name__}")
        if image.GetDimension() != 3:
            raise ValueError(f"{name} image is {image.GetDimension()}D: a 3D volume is needed")
    spacing = np.asarray(config.prepare.target_spacing, float)
    if config.coarsen_to_scans:
        spacing = np.maximum(spacing, input_spacing_mm(fixed, moving))
    for attempt in range(2):
        prepare = dataclasses.replace(config.prepare, target_spacing=tuple(float(s) for s in spacing))
        prepared = []
        for name, image, modality in (("fixed", fixed, fixed_modality), ("moving", moving, moving_modality)):
            try:
                prepared.append(preprocess_image(image, modality, prepare))
            except ValueError as exc:
                raise ValueError(f"{name} image: {exc}") from exc
        shift = initial_shift_mm(*(image_centre_of_mass_mm(p.image) for p in prepared), config.initial_alignment)
        box = frame_box_mm(prepared[0].image, prepared[1].image, shift)
        factor = spacing_factor(box[1] - box[0], spacing, config.max_size_xyz)
        if factor == 1.0 or attempt == 1:
            break
        spacing = spacing * factor  # the frame does not fit: preprocess both again at the coarser spacing
    grid = frame_grid(prepared[0].image, box)
    initial = sitk.TranslationTransform(3, tuple(float(s) for s in shift))
    return NetworkInputs(on_grid(prepared[0].image, grid), on_grid(prepared[1].image, grid, initial), initial,
                         region_dhw(grid, prepared[0].image), (prepared[0], prepared[1]))


def moving_data_box_mm(inputs: NetworkInputs, grid: sitk.Image, margin_voxels: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) corners (x, y, z mm) of where the moving image sampled onto ``grid`` through ``inputs.initial``
    holds moving-scan data: the moving scan's box moved back by the initial shift, less ``margin_voxels`` voxels of
    the grid on the sides where it ends inside the grid, cut to the grid's box. Beyond it the moving image is zero
    padding, whose edge a similarity would pull matches towards."""
    (scan_low, scan_high), (grid_low, grid_high) = voxel_box_mm(inputs.preprocessed[1].image), voxel_box_mm(grid)
    shift = np.asarray(inputs.initial.GetOffset(), float)
    margin = margin_voxels * max(grid.GetSpacing())
    return np.maximum(grid_low, scan_low - shift + margin), np.minimum(grid_high, scan_high - shift - margin)


def level_grid(box: tuple[np.ndarray, np.ndarray], spacing_mm: float) -> sitk.Image:
    """An empty identity-direction grid of ``spacing_mm`` voxels filling ``box``."""
    size = np.maximum(1, np.rint((box[1] - box[0]) / spacing_mm)).astype(int)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetOrigin(tuple(box[0] + spacing_mm / 2))
    return grid


def input_spacing_mm(fixed: sitk.Image, moving: sitk.Image) -> float:
    """The resolution the pair has detail at: the finer of the two scans' largest voxel sides (mm)."""
    return float(min(max(fixed.GetSpacing()), max(moving.GetSpacing())))


def frame_levels(inputs: NetworkInputs, fixed: sitk.Image, moving: sitk.Image, prepare: PrepareConfig,
                 spacings_mm: Sequence[float]) -> list[tuple[sitk.Image, sitk.Image]]:
    """(fixed, moving) over the fixed volume's box at each voxel size in ``spacings_mm``: at the network spacing the
    network images' fixed region; else the scans preprocessed alike (``prepare``, the modalities found for the
    network inputs) at the finest of ``spacings_mm`` and resampled (the moving one through ``inputs.initial``),
    smoothed by a Gaussian of half the voxel size where coarser than that."""
    network_spacing = inputs.fixed.GetSpacing()[0]
    finest = min(spacings_mm)
    sources = [p.image for p in inputs.preprocessed]
    if abs(finest - network_spacing) > 1e-6 * network_spacing:
        at_finest = dataclasses.replace(prepare, target_spacing=(float(finest),) * 3)
        sources = [preprocess_image(image, p.modality, at_finest).image
                   for image, p in zip((fixed, moving), inputs.preprocessed)]
    out = []
    for spacing in spacings_mm:
        if abs(spacing - network_spacing) < 1e-6 * network_spacing:
            crop = tuple(inputs.fixed_region_dhw[::-1])  # SimpleITK slices in (x, y, z)
            out.append((inputs.fixed[crop], inputs.moving[crop]))
            continue
        grid = level_grid(voxel_box_mm(sources[0]), spacing)
        smoothing = spacing / 2 if spacing > sources[0].GetSpacing()[0] * (1 + 1e-6) else 0.0
        out.append((on_grid(sources[0], grid, smoothing_mm=smoothing),
                    on_grid(sources[1], grid, inputs.initial, smoothing)))
    return out
