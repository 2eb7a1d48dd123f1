"""``match_volumes``: register two scans of any geometry with a GVSL network."""
from __future__ import annotations

import SimpleITK as sitk
import torch

from gvsl.match.config import MatchConfig
from gvsl.match.grid import prepare_network_inputs
from gvsl.match.metrics import match_metrics
from gvsl.match.physical import network_to_physical
from gvsl.match.result import MatchResult, image_tensor
from gvsl.networks import GVSL


def match_volumes(fixed: sitk.Image, moving: sitk.Image, model: GVSL, *, fixed_modality: str = "auto",
                  moving_modality: str = "auto", config: MatchConfig | None = None,
                  device: str | torch.device = "cpu") -> MatchResult:
    """Find where each point of ``fixed`` lies in ``moving`` (both 3D SimpleITK images of any size, spacing, origin
    and direction) with the network's Z-matching head (affine + field).

    Both are preprocessed as in training and zero-padded to one network size (``gvsl.match.grid``); ``model`` is
    moved to ``device`` and put in eval mode. Modalities: "CT", "MR" or "auto". Raises ValueError for an input that
    is not a usable 3D volume or a model that is not a GVSL network.
    """
    if not isinstance(model, GVSL):
        raise ValueError(f"model must be a GVSL network, got {type(model).__name__}")
    config = config or MatchConfig()
    fixed_input, moving_input = prepare_network_inputs(fixed, moving, fixed_modality, moving_modality, config)
    model = model.to(device).eval()
    a = image_tensor(fixed_input.image, device)
    b = image_tensor(moving_input.image, device)
    with torch.inference_mode():
        _, warped_b, theta, flow = model(a, b)
    physical = network_to_physical(theta, flow, model.conventions, fixed_input.image, moving_input.image)
    # SimpleITK's defaults (linear, 0 outside), so that sitk.Resample(moving, fixed, transform) reproduces it.
    warped = sitk.Resample(moving, fixed, physical.transform)
    displacement_mm_lps = sitk.TransformToDisplacementField(
        physical.transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
        fixed.GetDirection())
    metrics = match_metrics(a, b, warped_b, fixed_input.region_slices_dhw(), physical.displacement_mm,
                            physical.affine, displacement_mm_lps, config.ncc_window)
    warped_network = sitk.GetImageFromArray(warped_b[0, 0].float().cpu().numpy())
    warped_network.CopyInformation(fixed_input.image)
    return MatchResult(
        transform=physical.transform, affine=physical.affine, deformable=physical.deformable,
        displacement_mm_lps=displacement_mm_lps, warped=warped, metrics=metrics, conventions=model.conventions,
        fixed_network=fixed_input.image, moving_network=moving_input.image, warped_network=warped_network,
        fixed=fixed, moving=moving, model=model)
