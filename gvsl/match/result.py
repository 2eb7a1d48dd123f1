"""``MatchResult``: what ``match_volumes`` found, in physical space, plus label propagation and feature similarity."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from gvsl.carry_labels import carry_labels
from gvsl.networks import GVSL, sample_voxels


def image_tensor(image: sitk.Image, device: torch.device | str) -> torch.Tensor:
    """(1, 1, D, H, W) float32 tensor of a scalar image's voxels."""
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))[None, None].to(device)


@dataclass
class MatchResult:
    """A correspondence fixed -> moving found by a GVSL network. All points and vectors are LPS millimetres.

    - ``transform``: fixed point -> corresponding moving point (``affine`` after ``deformable``); it resamples the
      moving image into the fixed grid (``sitk.Resample(moving, fixed, transform)``);
    - ``affine``: the affine part; ``deformable``: x -> x + u(x), u in mm on the fixed network grid;
    - ``displacement_mm_lps``: T(x) - x (affine included), float64 3-vectors on the fixed image's grid;
    - ``warped``: the moving image (original intensities and pixel type) resampled into the fixed image's grid,
      linear interpolation, 0 outside the moving image (``sitk.Resample(moving, fixed, transform)``);
    - ``metrics``: see ``gvsl.match.metrics.match_metrics``, plus ``seconds`` (the stage's compute time);
      ``conventions``: the network's conventions;
    - ``fixed_network`` / ``moving_network``: the preprocessed inputs on the frame grid (the moving one placed by
      the initial alignment); ``warped_network``: the moving network image under the answer, on the same grid (the
      network's own output when there was no refinement);
    - ``network_transform`` / ``network_metrics``: the network's answer alone, before refinement (the same as
      ``transform`` / ``metrics`` when ``refine_iterations`` is 0); ``initial_alignment``: how the moving scan was
      placed before the network ("centres-of-mass" or "physical"), ``initial``: that placement (fixed point ->
      moving point, a translation; ``moving_network`` is the moving scan seen through it);
    - ``fixed`` / ``moving`` / ``model``: the inputs, kept for ``propagate_labels`` and ``feature_similarity``.
    """

    transform: sitk.CompositeTransform
    affine: sitk.AffineTransform
    deformable: sitk.DisplacementFieldTransform
    displacement_mm_lps: sitk.Image
    warped: sitk.Image
    metrics: dict[str, float]
    conventions: str
    fixed_network: sitk.Image
    moving_network: sitk.Image
    warped_network: sitk.Image
    network_transform: sitk.CompositeTransform
    network_metrics: dict[str, float]
    initial_alignment: str
    initial: sitk.Transform
    refine_iterations: int
    fixed: sitk.Image = field(repr=False)
    moving: sitk.Image = field(repr=False)
    model: GVSL = field(repr=False)
    _unit_features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def propagate_labels(self, label_image: sitk.Image) -> sitk.Image:
        """A label map defined on the moving image's physical space, carried onto the fixed grid by partial volumes
        (``gvsl.carry_labels``; 0 outside); same pixel type as ``label_image``."""
        if not isinstance(label_image, sitk.Image) or label_image.GetDimension() != 3:
            raise ValueError("label image must be a 3D SimpleITK image")
        return carry_labels(label_image, self.fixed, self.transform)

    def feature_similarity(self, point_lps: Sequence[float]) -> sitk.Image:
        """Cosine similarity between the backbone's local feature at a fixed LPS point and the feature at every voxel
        of the moving image: float32 in [-1, 1] on the moving image's grid (0 outside the moving network grid).

        The fixed feature is interpolated trilinearly at the point, which must lie inside the fixed network grid.
        """
        size = np.asarray(self.fixed_network.GetSize(), float)
        index_xyz = np.asarray(self.fixed_network.TransformPhysicalPointToContinuousIndex(
            [float(c) for c in point_lps]))
        if np.any(index_xyz < -0.5) or np.any(index_xyz > size - 0.5):
            raise ValueError(f"point {tuple(point_lps)} (LPS mm) lies outside the fixed image's network grid")
        fixed_features, moving_features = self.unit_features()
        voxel_dhw = torch.tensor(np.clip(index_xyz, 0, size - 1)[::-1].copy(), dtype=fixed_features.dtype,
                                 device=fixed_features.device).view(1, 3, 1, 1, 1)
        feature = F.normalize(sample_voxels(fixed_features, voxel_dhw), dim=1)
        cosine = (moving_features * feature).sum(dim=1)[0]
        similarity = sitk.GetImageFromArray(cosine.cpu().numpy().astype(np.float32))
        similarity.CopyInformation(self.moving_network)
        return sitk.Resample(similarity, self.moving, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    def unit_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone local features of the fixed and moving network images, unit length per voxel, (1, C, D, H, W)
        each (computed once)."""
        if self._unit_features is None:
            device = next(self.model.parameters()).device
            pair = torch.cat([image_tensor(self.fixed_network, device), image_tensor(self.moving_network, device)])
            with torch.inference_mode():
                local = F.normalize(self.model.features(pair)[1].float(), dim=1)
            self._unit_features = (local[:1], local[1:])
        return self._unit_features
