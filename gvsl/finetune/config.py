"""The fine-tuning configuration: defaults, a JSON config file, command-line flags (as for pre-training).

Precedence: defaults < ``--config FILE`` < flags. On ``--resume`` the run's own
``config.json`` replaces the defaults and only ``RESUME_OVERRIDABLE`` may change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from gvsl.train.config import RunConfig

MODES = ("finetune", "linear", "scratch", "random-linear")
PRETRAINED_MODES = frozenset({"finetune", "linear"})  # start from --init's backbone
FROZEN_BACKBONE_MODES = frozenset({"linear", "random-linear"})  # train the new head only
COLLECTION_MODE = "scratch"  # the default network start of a run with an unlabelled collection (see FinetuneConfig)
SCHEDULES = ("poly", "constant")
RESUME_OVERRIDABLE = frozenset({
    "iterations", "device", "precision", "workers", "checkpoint_every", "keep_checkpoints", "log_every",
    "val_every", "tensorboard", "progress",
})


@dataclass
class FinetuneConfig(RunConfig):
    """Everything that defines a fine-tuning run.

    ``data``: image/label pairs (see ``gvsl.finetune.data.find_cases``); ``labels``: a label table file (default:
    the one found with the data). ``init``: pre-trained checkpoint (ours or the published GVSL state dict).
    ``mode``: "finetune" (all weights), "linear" (frozen backbone, head only), "scratch" (random init),
    "random-linear" (frozen *random* backbone, head only: the control for "linear"; no ``init``); None (the
    default) resolves to ``COLLECTION_MODE`` with ``unlabelled``, else "finetune". With a collection, ``init`` is
    the network that matches it, and a network started from random weights segmented better than one started from
    it on every donor measured (benchmarks/RESULTS.md); "finetune" remains a choice. The random-weight modes take
    ``init``'s widths when it is given and ``channels`` is not.
    Sizes in voxels of the preprocessed grid (``spacing`` mm, x, y, z); ``lr``: Adam's initial learning rate,
    then ``schedule`` "poly" (lr (1 - i / iterations) ** 0.9 at iteration i, as nnU-Net) or "constant";
    ``*_every`` in iterations;
    ``foreground``: fraction of patches centred on a labelled voxel (class chosen uniformly among the labels
    present); ``val_fraction``: share of cases held out for validation (at least one; a single case is reused);
    ``val_data``: labelled cases (layouts as ``data``) used only for validation, instead of a share of ``data``;
    ``val_windows``: validation crops (fixed for the run, see ``gvsl.finetune.validation``), 0 for whole volumes.
    ``unlabelled``: a folder of unlabelled scans (anything ``gvsl scan`` reads) that every labelled case is matched
    onto, giving pseudo-labelled training cases (``gvsl.finetune.collection``); ``match_checkpoint``:
    the GVSL network that matches them (default ``init``; neither: an untrained network, the refinement carries the
    match); ``min_agreement``: share of the carried label maps that must agree for a voxel's pseudo-label to count;
    ``match_workers``: scans matched at once, each in its own process (None: ``default_match_workers``).
    """

    RESUME_OVERRIDABLE = RESUME_OVERRIDABLE

    data: Optional[str] = None
    out: Optional[str] = None
    init: Optional[str] = None
    labels: Optional[str] = None
    cache: Optional[str] = None
    mode: Optional[str] = None
    iterations: int = 5000
    patch: Tuple[int, int, int] = (96, 96, 96)
    batch: int = 2
    channels: Optional[Tuple[int, ...]] = None
    lr: float = 1e-4
    schedule: str = "poly"
    weight_decay: float = 0.0
    foreground: float = 0.5
    augment: bool = True
    val_fraction: float = 0.2
    val_data: Optional[str] = None
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "auto"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    val_every: int = 250
    val_windows: int = 16
    unlabelled: Optional[str] = None
    match_checkpoint: Optional[str] = None
    min_agreement: float = 1.0
    match_workers: Optional[int] = None
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self._check_shared(("iterations", "batch", "val_every", "checkpoint_every", "keep_checkpoints", "log_every"))
        if self.mode is None:
            self.mode = COLLECTION_MODE if self.unlabelled else "finetune"
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode in PRETRAINED_MODES and self.init is None:
            raise ValueError(f"--mode {self.mode} starts from a pre-trained model: give --init CHECKPOINT "
                             "(or use --mode scratch)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay >= 0")
        if not 0.0 <= self.foreground <= 1.0 or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("foreground must be in [0, 1] and val_fraction in [0, 1)")
        if not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement}")
        if self.match_workers is not None and self.match_workers < 1:
            raise ValueError(f"match_workers must be 1 or more, got {self.match_workers}")
        if self.val_windows < 0:
            raise ValueError(f"val_windows must be 0 (whole volumes) or more, got {self.val_windows}")
