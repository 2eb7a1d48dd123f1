"""Settings of ``match_volumes``: the training preprocessing, the initial alignment, the largest network input and
the test-time refinement."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gvsl.data import PrepareConfig
from gvsl.data.alignment import check_initial_alignment
from gvsl.match.refine import RefineConfig
from gvsl.networks.backbone import SIZE_MULTIPLE
from gvsl.networks.correlation import FieldStage, MatchingStage, check_stages


@dataclass(frozen=True)
class CorrelationField:
    """The network's field from its correlation head's matches (``CorrelationAffineHead.displacement``): each voxel
    matched within ``radius`` voxels, at every ``stride``-th voxel, ``passes`` times, smoothed by a Gaussian of
    ``sigma_mm``."""

    radius: int = 1
    passes: int = 4
    sigma_mm: float = 12.0
    stride: int = 2

    def stage(self, spacing_mm: float) -> FieldStage:
        """The ``FieldStage`` on a network grid of ``spacing_mm`` voxels."""
        return FieldStage(self.radius, self.passes, self.sigma_mm / spacing_mm, self.stride)


@dataclass
class MatchConfig:
    """``prepare``: the preprocessing the network was trained with (target spacing, CT window, MR percentiles).
    ``initial_alignment``: how the moving scan is placed in the fixed scan's frame before the network sees it
    ("centres-of-mass" or "physical"; see ``gvsl.data.alignment``). ``max_size_xyz``: the largest network input in
    voxels, (x, y, z) = (W, H, D), each a multiple of 16; a frame whose extent exceeds it at the target spacing is
    seen at a coarser spacing (see ``gvsl.match.frame``). ``ncc_window``: side in voxels of the boxes of the local
    NCC metric. ``refine``: the test-time refinement (``iterations=0``: the network's answer alone).
    ``coarsen_to_scans``: the network sees the pair at ``prepare``'s spacing or at the scans' own resolution
    (``gvsl.match.frame.input_spacing_mm``), whichever is coarser: finer than the scans adds voxels (8 times more per
    halving), not detail. False takes ``prepare``'s spacing as given (a spacing chosen on the command line).
    ``affine_stages``: the correlation head's coarse-to-fine schedule at match time (None: the stage it was trained
    with, 4³-voxel blocks, 4 passes); ``correlation_field``: the network's field from that head's single-voxel matches
    (None: the paper's deformable head). Both apply to correlation networks only: on the sample heads they bring the
    network alone from 5.8 to 2.3 mm (a 16-minute pre-training), where the deformable head made it worse; the
    finer stage fits its affine to every second block's match (0.02 mm farther, about 2.5 s less on a 2 mm head
    pair; benchmarks/RESULTS.md)."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    initial_alignment: str = "centres-of-mass"
    max_size_xyz: tuple[int, int, int] = (160, 160, 160)
    ncc_window: int = 9
    refine: RefineConfig = field(default_factory=RefineConfig)
    coarsen_to_scans: bool = True
    affine_stages: Optional[tuple[MatchingStage, ...]] = (MatchingStage(pool=4, radius=3, passes=4),
                                                          MatchingStage(pool=2, radius=2, passes=4, stride=2))
    correlation_field: Optional[CorrelationField] = field(default_factory=CorrelationField)

    def __post_init__(self) -> None:
        if self.affine_stages is not None:
            self.affine_stages = check_stages(self.affine_stages)
        check_initial_alignment(self.initial_alignment)
        self.max_size_xyz = tuple(int(s) for s in self.max_size_xyz)
        if len(self.max_size_xyz) != 3 or any(s < SIZE_MULTIPLE or s % SIZE_MULTIPLE for s in self.max_size_xyz):
            raise ValueError(f"max_size_xyz must be three multiples of {SIZE_MULTIPLE}, got {self.max_size_xyz}")
