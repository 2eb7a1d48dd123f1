"""Ranges and probabilities of the GVSL pre-training augmentations."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentationConfig:
    """All ranges and probabilities; the defaults are the paper's.

    Appearance (Models Genesis corruptions, applied to the copy A' only, each
    with its own per-sample probability, in this order):

    - ``shuffle_*``: local pixel shuffling. The cells of a randomly shifted
      grid of boxes of edge ``shuffle_box_fraction * size`` per axis (size/20)
      have their voxels permuted, each with probability ``shuffle_coverage``
      (the incomplete cells at the border are left alone: ~60% of a 128^3
      volume is shuffled). Models Genesis' 10,000 boxes of random edge
      1..size/10 cover a similar share of a 128^3 volume,
      1 - exp(-10000 * 6.5^3 / 128^3) = 0.73.
    - ``intensity_prob``: monotone cubic Bezier intensity mapping.
    - ``inpaint_*``: in-painting; box count geometric (``inpaint_continue_prob``
      to draw one more), at most ``inpaint_max_boxes``, edges uniform in
      ``inpaint_box_fraction * size`` per axis, filled with U[0, 1] noise.
      Models Genesis gates painting with 0.9 and then chooses in-painting with
      0.2 or else out-painting; GVSL uses in-painting only, so the default
      probability is 0.2 (no out-painting).

    Spatial (one per-sample transform for A, A' and B; voxel units, array axes
    (d, h, w), about the volume centre): rotation U[-r, r] per axis (rad),
    scale U[scale_range] per axis, translation U[-f, f] * size per axis,
    shear U[-s, s] for each of the six off-diagonal entries (rad), elastic
    displacement ``alpha * gaussian_sigma * U[-1, 1]`` per axis, with
    ``alpha ~ U[elastic_alpha]`` and ``sigma ~ U[elastic_sigma]`` (voxels),
    computed on a grid ``elastic_grid_spacing`` times coarser (see
    :func:`gvsl.augment.spatial.elastic_displacement`).
    """

    shuffle_prob: float = 0.8
    shuffle_box_fraction: float = 1 / 20
    shuffle_coverage: float = 0.7
    intensity_prob: float = 0.9
    inpaint_prob: float = 0.2
    inpaint_max_boxes: int = 30
    inpaint_continue_prob: float = 0.95
    inpaint_box_fraction: tuple[float, float] = (1 / 10, 1 / 5)
    rotation_max_rad: float = math.pi / 9
    scale_range: tuple[float, float] = (0.75, 1.25)
    translation_fraction: float = 0.1
    shear_max_rad: float = math.pi / 18
    elastic_alpha: tuple[float, float] = (0.0, 512.0)
    elastic_sigma: tuple[float, float] = (10.0, 13.0)
    elastic_grid_spacing: int = 4

    @classmethod
    def identity(cls) -> AugmentationConfig:
        """No corruption and the identity transform (outputs equal inputs up to float rounding)."""
        return cls(shuffle_prob=0.0, intensity_prob=0.0, inpaint_prob=0.0, rotation_max_rad=0.0,
                   scale_range=(1.0, 1.0), translation_fraction=0.0, shear_max_rad=0.0, elastic_alpha=(0.0, 0.0))
