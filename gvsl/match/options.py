"""What a person chooses when matching two scan files with a checkpoint (``MatchOptions``), and the ``MatchConfig``
those choices give with that checkpoint: a choice left open is what the checkpoint was trained with, else the
default."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gvsl.data import PrepareConfig
from gvsl.match.config import MatchConfig
from gvsl.match.refine import RefineConfig


@dataclass(frozen=True)
class MatchOptions:
    """``fixed_modality``, ``moving_modality``: "auto" (inferred from the intensities), "CT" or "MR".
    ``initial_alignment``: "centres-of-mass", "physical", or None for the rule the checkpoint was trained with (else
    centres-of-mass). ``refine_iterations``: the most optimisation steps per refinement stage (0: the network's
    answer alone).
    ``device``: "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps".
    ``target_spacing`` (mm, (x, y, z)), ``ct_window`` (HU mapped to 0 and 1), ``mr_percentiles`` (MR percentiles
    mapped to 0 and 1): None for the checkpoint's training preprocessing, else ``PrepareConfig``'s defaults (a
    ``target_spacing`` given is the network's spacing as it is; left to the checkpoint, it is never finer than the
    scans: ``MatchConfig.coarsen_to_scans``).
    ``max_size_xyz``: the largest network input in voxels, (x, y, z), multiples of 16 (``MatchConfig``)."""

    fixed_modality: str = "auto"
    moving_modality: str = "auto"
    initial_alignment: str | None = None
    refine_iterations: int = RefineConfig().iterations
    device: str = "auto"
    target_spacing: tuple[float, float, float] | None = None
    ct_window: tuple[float, float] | None = None
    mr_percentiles: tuple[float, float] | None = None
    max_size_xyz: tuple[int, int, int] = MatchConfig().max_size_xyz

    @classmethod
    def from_arguments(cls, arguments: Any) -> MatchOptions:
        """The options of parsed ``gvsl match`` arguments (the attributes its parser sets)."""
        return cls(fixed_modality=arguments.fixed_modality, moving_modality=arguments.moving_modality,
                   initial_alignment=arguments.initial_alignment, refine_iterations=arguments.refine,
                   device=arguments.device, target_spacing=arguments.spacing, ct_window=arguments.ct_window,
                   mr_percentiles=arguments.mr_percentiles, max_size_xyz=tuple(arguments.max_size))


def preprocessing_for(options: MatchOptions, payload: dict) -> PrepareConfig:
    """The preprocessing to match with: the options given, else what the checkpoint was trained with
    (recorded by ``gvsl pretrain``), else the defaults."""
    trained = payload.get("preprocessing") or {}
    default = PrepareConfig()

    def pick(chosen, key, fallback):
        value = chosen if chosen is not None else trained.get(key, fallback)
        return tuple(float(v) for v in value)

    return PrepareConfig(target_spacing=pick(options.target_spacing, "target_spacing", default.target_spacing),
                         ct_window=pick(options.ct_window, "ct_window", default.ct_window),
                         mr_percentiles=pick(options.mr_percentiles, "mr_percentiles", default.mr_percentiles))


def match_config_for(options: MatchOptions, payload: dict) -> MatchConfig:
    """The ``MatchConfig`` of ``options`` with the checkpoint ``payload``; ValueError for options it refuses."""
    if options.refine_iterations < 0:
        raise ValueError(f"--refine must be >= 0, got {options.refine_iterations}")
    alignment = options.initial_alignment or payload.get("initial_alignment", "centres-of-mass")
    return MatchConfig(prepare=preprocessing_for(options, payload), max_size_xyz=options.max_size_xyz,
                       initial_alignment=alignment, refine=RefineConfig(iterations=options.refine_iterations),
                       coarsen_to_scans=options.target_spacing is None)
