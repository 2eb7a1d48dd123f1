"""Settings of ``match_volumes``: the training preprocessing and the largest network input."""
from __future__ import annotations

from dataclasses import dataclass, field

from gvsl.data import PrepareConfig
from gvsl.networks.backbone import SIZE_MULTIPLE


@dataclass
class MatchConfig:
    """``prepare``: the preprocessing the network was trained with (target spacing, CT window, MR percentiles).
    ``max_size_xyz``: the largest network input in voxels, (x, y, z) = (W, H, D), each a multiple of 16; a
    volume whose extent exceeds it at the target spacing is seen at a coarser spacing (see ``gvsl.match.grid``).
    ``ncc_window``: side in voxels of the boxes of the local NCC metric."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    max_size_xyz: tuple[int, int, int] = (160, 160, 160)
    ncc_window: int = 9

    def __post_init__(self) -> None:
        self.max_size_xyz = tuple(int(s) for s in self.max_size_xyz)
        if len(self.max_size_xyz) != 3 or any(s < SIZE_MULTIPLE or s % SIZE_MULTIPLE for s in self.max_size_xyz):
            raise ValueError(f"max_size_xyz must be three multiples of {SIZE_MULTIPLE}, got {self.max_size_xyz}")
