"""``match_volumes``: register two scans of any geometry with a GVSL network, then refine on the pair itself."""
from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.match.config import MatchConfig
from gvsl.match.frame import (
    NetworkInputs,
    frame_levels,
    input_spacing_mm,
    moving_data_box_mm,
    prepare_network_inputs,
    voxel_box_mm,
)
from gvsl.match.grid import RegularGrid
from gvsl.match.metrics import match_metrics
from gvsl.match.physical import PhysicalTransforms, network_to_frame, physical_transforms
from gvsl.match.refine import LevelImages, refine
from gvsl.match.result import MatchResult, image_tensor
from gvsl.networks import GVSL
from gvsl.train.device import forward_channels_last


def stage_outputs(inputs: NetworkInputs, fixed: sitk.Image, transforms: PhysicalTransforms, warped_network: sitk.Image,
                  config: MatchConfig) -> tuple[sitk.Image, dict[str, float]]:
    """The displacement T(x) - x on the fixed image's grid and the metrics of one answer (network or refined)."""
    displacement_mm_lps = sitk.TransformToDisplacementField(
        transforms.transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
        fixed.GetDirection())
    tensors = [image_tensor(image, "cpu") for image in (inputs.fixed, inputs.moving, warped_network)]
    metrics = match_metrics(*tensors, inputs.fixed_region_dhw, transforms.displacement_mm, transforms.affine,
                            displacement_mm_lps, config.ncc_window)
    return displacement_mm_lps, metrics


def moving_support(inputs: NetworkInputs, margin_voxels: int, device: str | torch.device) -> torch.Tensor:
    """(1, 1, D, H, W) float32 on the network grid: 1 where the moving network image holds moving-scan data at least
    ``margin_voxels`` inside it (``moving_data_box_mm``), else 0."""
    low, high = (torch.as_tensor(v, dtype=torch.float32, device=device)
                 for v in moving_data_box_mm(inputs, inputs.fixed, margin_voxels))
    points = RegularGrid.of(inputs.fixed).points_xyz(device)
    return ((points >= low) & (points <= high)).all(-1).to(torch.float32)[None, None]


def refine_on_pair(inputs: NetworkInputs, fixed: sitk.Image, moving: sitk.Image, affine_mm: np.ndarray,
                   field_grid: sitk.Image, config: MatchConfig, device: str | torch.device
                   ) -> tuple[np.ndarray, sitk.Image, int]:
    """``gvsl.match.refine.refine`` on the frame's resolution levels, on ``device``, from the network's affine:
    A, u on the grid of ``field_grid`` and the steps taken. The similarity counts only the fixed voxels whose match
    lies half an NCC window and one voxel or more inside the moving scan's data (``moving_data_box_mm``)."""
    spacings = config.refine.level_spacings(input_spacing_mm(fixed, moving))
    margin = config.refine.ncc_window // 2 + 1  # the NCC window's half, and one voxel more for interpolation
    levels = [LevelImages(image_tensor(f, device), image_tensor(m, device), RegularGrid.of(f),
                          moving_data_box_mm(inputs, f, margin))
              for f, m in frame_levels(inputs, fixed, moving, config.prepare, spacings)]
    return refine(levels, affine_mm, field_grid, voxel_box_mm(inputs.fixed), config.refine)


def match_volumes(fixed: sitk.Image, moving: sitk.Image, model: GVSL, *, fixed_modality: str = "auto",
                  moving_modality: str = "auto", config: MatchConfig | None = None,
                  device: str | torch.device = "cpu") -> MatchResult:
    """Find where each point of ``fixed`` lies in ``moving`` (both 3D SimpleITK images of any size, spacing, origin
    and direction): the initial alignment, then the network's answer (affine + field; for a correlation network
    with ``config.affine_stages`` and ``config.correlation_field``), then, unless
    ``config.refine.iterations`` is 0, the refinement on the pair.

    Both are preprocessed as in training and placed on one frame grid (``gvsl.match.frame``); ``model`` is moved to
    ``device`` (on a CPU, in the channels-last layout) and put in eval mode; the refinement runs there too.
    Modalities: "CT", "MR" or "auto". Raises ValueError for an input that is not a usable 3D volume or a model that
    is not a GVSL network.
    """
    if not isinstance(model, GVSL):
        raise ValueError(f"model must be a GVSL network, got {type(model).__name__}")
    config = config or MatchConfig()
    inputs = prepare_network_inputs(fixed, moving, fixed_modality, moving_modality, config)
    memory_format = torch.channels_last_3d if forward_channels_last(device) else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    started = time.perf_counter()
    field = config.correlation_field
    field_stage = field.stage(inputs.fixed.GetSpacing()[0]) if field is not None else None
    # The field's matches count only where the moving image holds data, by the descriptors' reach (two 3³
    # convolutions: 2 voxels) and the match radius, as the refinement's similarity does.
    support = moving_support(inputs, 2 + field.radius, device) if field is not None else None
    with torch.inference_mode():
        _, warped_b, theta, flow = model.register(
            *(image_tensor(image, device).contiguous(memory_format=memory_format)
              for image in (inputs.fixed, inputs.moving)), config.affine_stages, field_stage, support)
    affine_mm, displacement_mm = network_to_frame(theta, flow, model.conventions, inputs.fixed, inputs.fixed)
    network = physical_transforms(affine_mm, displacement_mm, inputs.initial)
    network_warped = sitk.GetImageFromArray(warped_b[0, 0].float().cpu().numpy())
    network_warped.CopyInformation(inputs.fixed)
    network_displacement, network_metrics = stage_outputs(inputs, fixed, network, network_warped, config)
    network_metrics["seconds"] = time.perf_counter() - started
    final, warped_network, displacement_mm_lps, metrics = network, network_warped, network_displacement, network_metrics
    if config.refine.iterations:
        started = time.perf_counter()
        refined_affine_mm, refined_displacement_mm, steps = refine_on_pair(inputs, fixed, moving, affine_mm,
                                                                            displacement_mm, config, device)
        final = physical_transforms(refined_affine_mm, refined_displacement_mm, inputs.initial)
        in_frame = physical_transforms(refined_affine_mm, refined_displacement_mm).transform
        warped_network = sitk.Resample(inputs.moving, inputs.fixed, in_frame)
        displacement_mm_lps, metrics = stage_outputs(inputs, fixed, final, warped_network, config)
        metrics["seconds"] = time.perf_counter() - started
        metrics["refine_steps"] = steps
    # SimpleITK's defaults (linear, 0 outside), so that sitk.Resample(moving, fixed, transform) reproduces it.
    warped = sitk.Resample(moving, fixed, final.transform)
    return MatchResult(
        transform=final.transform, affine=final.affine, deformable=final.deformable,
        displacement_mm_lps=displacement_mm_lps, warped=warped, metrics=metrics, conventions=model.conventions,
        fixed_network=inputs.fixed, moving_network=inputs.moving, warped_network=warped_network,
        network_transform=network.transform, network_metrics=network_metrics,
        initial_alignment=config.initial_alignment, initial=inputs.initial, refine_iterations=config.refine.iterations,
        fixed=fixed, moving=moving, model=model)
