"""Settings of ``match_volumes``: the training preprocessing, the initial alignment, the largest network input and
the test-time refinement."""
from __future__ import annotations

from dataclasses import dataclass, field

from gvsl.data import PrepareConfig
from gvsl.data.alignment import check_initial_alignment
from gvsl.match.refine import RefineConfig
from gvsl.networks.backbone import SIZE_MULTIPLE


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
    halving), not detail. False takes ``prepare``'s spacing as given (a spacing chosen on the command line)."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    initial_alignment: str = "centres-of-mass"
    max_size_xyz: tuple[int, int, int] = (160, 160, 160)
    ncc_window: int = 9
    refine: RefineConfig = field(default_factory=RefineConfig)
    coarsen_to_scans: bool = True

    def __post_init__(self) -> None:
        check_initial_alignment(self.initial_alignment)
        self.max_size_xyz = tuple(int(s) for s in self.max_size_xyz)
        if len(self.max_size_xyz) != 3 or any(s < SIZE_MULTIPLE or s % SIZE_MULTIPLE for s in self.max_size_xyz):
            raise ValueError(f"max_size_xyz must be three multiples of {SIZE_MULTIPLE}, got {self.max_size_xyz}")
