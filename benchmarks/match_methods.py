"""The registration methods the match benchmarks run side by side, and how they are scored.

Every method returns a transform that maps a fixed physical point (LPS mm) to the corresponding moving point (the
direction that resamples the moving image onto the fixed grid). SimpleITK, ITK files and ANTs all work in LPS, so
no conversion happens anywhere here.

- ``centres_of_mass``: the translation between intensity-weighted centres (gvsl's initial alignment);
- ``simpleitk_affine``: a classical affine registration;
- ``ants_registration``: ANTs (``antspyx``, a benchmark-only extra: ``pip install antspyx==0.6.3``), its forward
  composite transform read back with SimpleITK;
- ``gvsl_match``: the ``gvsl match`` command, run in-process.

Scores: ``carry_labels`` (a moving label map onto the fixed grid, nearest neighbour), ``dice_per_label`` and
``folding_percent`` (share of fixed voxels where a transform's Jacobian determinant is not positive).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from gvsl.cli import main as gvsl

ANTS_INSTALL = "pip install antspyx==0.6.3"
ANTS_METHODS = ("SyN", "antsRegistrationSyN[s]")  # antspyx type_of_transform names
ANTS_SEED = 1
T = TypeVar("T")


def set_threads(count: int) -> None:
    """Use ``count`` threads in torch, SimpleITK and ANTs (ITK's environment variable, read when ANTs starts)."""
    import torch

    torch.set_num_threads(count)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(count)


def timed(compute: Callable[[], T]) -> tuple[T, float]:
    """``compute()`` and its wall-clock time in seconds."""
    started = time.perf_counter()
    result = compute()
    return result, time.perf_counter() - started


def summary(errors: np.ndarray) -> dict[str, float]:
    """Mean, median and 90th percentile of point errors (mm)."""
    return {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)),
            "p90_mm": float(np.percentile(errors, 90))}


def centres_of_mass(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """The translation taking the fixed image's centre of mass to the moving image's (ITK MOMENTS)."""
    return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)


def simpleitk_affine(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """A classical affine registration: correlation, centres-of-mass start, regular-step gradient descent with
    physical-shift scales, shrink factors 2 and 1 (smoothing 1 and 0 voxels)."""
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1, 0])
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def ants_available() -> bool:
    """Whether antspyx is installed (the ANTs rows are skipped without it)."""
    return find_spec("ants") is not None


def ants_registration(fixed: Path, moving: Path, type_of_transform: str) -> sitk.Transform:
    """ANTs registration of two image files (antspyx ``ants.registration``, its defaults for ``type_of_transform``,
    random seed ``ANTS_SEED``): the forward composite transform, fixed LPS point -> moving LPS point (what
    ``antsApplyTransforms`` resamples the moving image with), read with SimpleITK."""
    import ants
    from ants.config import set_ants_deterministic

    set_ants_deterministic(False, ANTS_SEED)  # a fixed seed; on=True would also force one thread
    with tempfile.TemporaryDirectory() as work:
        result = ants.registration(ants.image_read(str(fixed)), ants.image_read(str(moving)), type_of_transform,
                                   outprefix=str(Path(work) / "ants_"), write_composite_transform=True)
        return sitk.ReadTransform(result["fwdtransforms"])


class GvslMatch(NamedTuple):
    """``gvsl match`` on one pair: ``final`` (fixed -> moving, LPS), ``network`` (the network's answer alone, None
    without refinement), ``metrics`` (its metrics.json) and ``seconds`` (the whole in-process call)."""

    final: sitk.Transform
    network: Optional[sitk.Transform]
    metrics: dict
    seconds: float


def gvsl_match(fixed: Path, moving: Path, checkpoint: str, out: Path, options: Sequence[str] = ()) -> GvslMatch:
    """Run ``gvsl match FIXED MOVING --checkpoint C --out OUT --fixed-modality MR --moving-modality MR [options]``
    in this process (SystemExit when it fails)."""
    command = ["match", str(fixed), str(moving), "--checkpoint", str(checkpoint), "--out", str(out),
               "--fixed-modality", "MR", "--moving-modality", "MR", *options]
    status, seconds = timed(lambda: gvsl(command))
    if status != 0:
        raise SystemExit(f"gvsl match failed on {fixed.name} -> {moving.name}")
    network = out / "transform_network.h5"
    return GvslMatch(sitk.ReadTransform(str(out / "transform.h5")),
                     sitk.ReadTransform(str(network)) if network.is_file() else None,
                     json.loads((out / "metrics.json").read_text()), seconds)


def carry_labels(moving_labels: sitk.Image, fixed: sitk.Image, fixed_to_moving: sitk.Transform) -> sitk.Image:
    """The moving label map on the fixed grid through the fixed -> moving transform (nearest neighbour, 0 outside)."""
    return sitk.Resample(moving_labels, fixed, fixed_to_moving, sitk.sitkNearestNeighbor, 0, moving_labels.GetPixelID())


def dice_per_label(reference: sitk.Image, labels: sitk.Image, values: Sequence[int]) -> dict[int, float]:
    """Dice of each value in ``values`` between two label maps on one grid (1.0 where both lack it)."""
    a, b = sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(labels)
    out = {}
    for value in values:
        in_a, in_b = a == value, b == value
        total = int(np.count_nonzero(in_a)) + int(np.count_nonzero(in_b))
        out[int(value)] = 2.0 * np.count_nonzero(in_a & in_b) / total if total else 1.0
    return out


def folding_percent(fixed_to_moving: sitk.Transform, fixed: sitk.Image) -> float:
    """Percentage of the fixed image's voxels where the transform folds (Jacobian determinant <= 0), the determinant
    from central differences (mm) of T(x) - x sampled at the fixed voxels."""
    field = sitk.TransformToDisplacementField(fixed_to_moving, sitk.sitkVectorFloat64, fixed.GetSize(),
                                              fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    # A copy (GetArrayFromImage): a view of the temporary image would outlive its buffer.
    determinant = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    return float(100.0 * np.count_nonzero(determinant <= 0) / determinant.size)
