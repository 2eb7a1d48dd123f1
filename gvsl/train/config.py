"""The pre-training configuration: defaults (the paper's), a JSON config file, command-line flags.

Precedence: defaults < ``--config FILE`` < flags. On ``--resume`` the run's
own ``config.json`` takes the place of the defaults and only the fields in
``RESUME_OVERRIDABLE`` may change (the others define the run).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

from gvsl.atomic_files import write_text_atomically

CONFIG_NAME = "config.json"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO_BATCH = "auto"  # the batch planned for the device's free memory (gvsl.train.auto_batch)
DEFAULT_ARCHITECTURE = "correlation"  # for new runs; "paper" is the published network (see gvsl.networks.GVSL)
# Fields a resumed run may change; the others (data, model, optimiser, seed) define the run.
RESUME_OVERRIDABLE = frozenset({
    "iterations", "time_limit_s", "device", "precision", "workers", "checkpoint_every", "keep_checkpoints", "log_every",
    "image_every", "tensorboard", "activation_checkpointing", "channels_last", "progress",
})


class RunConfig:
    """What every run configuration (a dataclass) shares: JSON round trip, unknown names refused by name.

    Subclasses set ``RESUME_OVERRIDABLE``: the settings a resumed run may change.
    """

    RESUME_OVERRIDABLE: frozenset = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "configuration") -> RunConfig:
        """Build from a mapping of field names; unknown names raise ValueError naming them and ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) in {source}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def _check_shared(self, counts: Sequence[str]) -> None:
        """Normalise and check what every run has (patch, channels, spacing, workers, precision) and the ``counts``
        (numbers of iterations or items that must be at least 1); ValueError naming the setting."""
        self.patch = parse_patch(self.patch)
        if self.channels is not None:
            self.channels = parse_channels(self.channels)
        if self.spacing is not None:
            self.spacing = parse_spacing(self.spacing)
        for name in counts:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a pre-training run. Defaults follow the GVSL paper.

    Sizes are in voxels of the cache's grid; ``lr`` is Adam's learning rate;
    ``time_limit_s``: seconds after which this process saves a checkpoint
    and stops as on a stop request (resumable; None: no limit).
    ``checkpoint_every``, ``log_every`` and ``image_every`` are in iterations
    (one iteration = one optimiser step; with several processes each draws
    ``batch`` pairs, so the effective batch is ``batch * world_size``); ``batch`` ``"auto"``: on a GPU
    the paper's 2, or what fits its free memory, maybe with activation checkpointing or a smaller crop
    (``gvsl.train.memory_plan``); 2 elsewhere; a run's ``config.json`` holds the resolved number.
    ``channels``/``conventions``/``architecture`` of None mean: those of
    ``init``, else the default widths, the "corrected" conventions and
    ``DEFAULT_ARCHITECTURE``. ``initial_alignment``: how B is placed in A's
    frame before the corresponding crops are taken (``gvsl.data.alignment``);
    ``gvsl match`` applies the same rule by default. ``weight_ncc_affine``:
    the NCC of B warped by the affine alone (0: the paper's loss).
    ``synthetic_fraction``: share of pairs that are A against a copy of A
    under a known affine, where the affine head's error is a loss term of
    weight ``weight_synthetic_affine`` (``gvsl.pretrain.synthetic``; 0: the
    paper's pairs). ``channels_last`` of None
    means: on the CPU in float32 when every width is >= 32, else contiguous
    (measured; see ``gvsl.train.device.use_channels_last``).
    """

    RESUME_OVERRIDABLE = RESUME_OVERRIDABLE

    data: Optional[str] = None
    out: Optional[str] = None
    cache: Optional[str] = None
    spacing: Optional[Tuple[float, float, float]] = None
    init: Optional[str] = None
    iterations: int = 200_000
    time_limit_s: Optional[float] = None
    patch: Tuple[int, int, int] = (128, 128, 128)
    batch: int | str = AUTO_BATCH
    channels: Optional[Tuple[int, ...]] = None
    conventions: Optional[str] = None
    architecture: Optional[str] = None
    initial_alignment: str = "centres-of-mass"
    lr: float = 1e-4
    weight_ncc: float = 1.0
    weight_mse: float = 1.0
    weight_smooth: float = 1.0
    weight_ncc_affine: float = 0.0
    synthetic_fraction: float = 0.0
    weight_synthetic_affine: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: Optional[bool] = None
    activation_checkpointing: bool = False
    workers: int = 2
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    image_every: int = 1000
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.batch = parse_batch(self.batch)
        self._check_shared(("iterations", "checkpoint_every", "keep_checkpoints", "log_every", "image_every"))
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time limit must be positive, got {self.time_limit_s} s")
        if min(self.weight_ncc, self.weight_mse, self.weight_smooth, self.weight_ncc_affine,
               self.weight_synthetic_affine) < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0 <= self.synthetic_fraction <= 1:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        # Imported here: reading a configuration (e.g. for ``--help``) must not import torch or SimpleITK.
        from gvsl.data.alignment import check_initial_alignment
        from gvsl.networks.gvsl import check_architecture

        check_initial_alignment(self.initial_alignment)
        if self.architecture is not None:
            check_architecture(self.architecture, self.conventions or "corrected")



def parse_patch(value: int | str | Sequence[int]) -> tuple[int, int, int]:
    """One size for a cube or three (D, H, W); from an int, a list, or "128" / "128,128,96"."""
    if isinstance(value, str):
        value = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    sizes = [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or min(sizes) < 16:
        raise ValueError(f"patch must be one size or three sizes (D, H, W), each >= 16 voxels; got {value!r}")
    return tuple(sizes)


def parse_batch(value: int | str) -> int | str:
    """Pairs per iteration and process: a number >= 1, or "auto" (``AUTO_BATCH``)."""
    if str(value).strip().lower() == AUTO_BATCH:
        return AUTO_BATCH
    try:
        batch = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"batch must be a number of pairs or auto, got {value!r}") from exc
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {value!r}")
    return batch


def parse_spacing(value: float | str | Sequence[float]) -> tuple[float, float, float]:
    """Voxel size in mm, (x, y, z): one size for isotropic voxels or three; from a number, a list, or "1.5,1.5,3"."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        sizes = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be one or three sizes in mm, got {value!r}") from exc
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or min(sizes) <= 0:
        raise ValueError(f"spacing must be one or three positive sizes in mm, got {value!r}")
    return tuple(sizes)


def parse_duration(value: float | str) -> float:
    """Seconds from a number of seconds or a string with a unit: "45s", "90m", "3h", "1.5h"."""
    text = str(value).strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError as exc:
        raise ValueError(f"a duration is a number of seconds or a number with s, m or h; got {value!r}") from exc
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_channels(value: str | Sequence[int]) -> tuple[int, ...]:
    """Nine backbone widths from "8,16,32,64,128,64,32,16,8" or a sequence."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        widths = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"channels must be nine comma-separated integers, got {value!r}") from exc
    if len(widths) != 9 or min(widths) < 2:
        raise ValueError(f"channels must be nine widths >= 2 (encoder 5, decoder 4), got {value!r}")
    return widths


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a JSON config file (a ``config.json`` of an earlier run works too)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of settings")
    return values


def resolve_config(config_class: type[RunConfig], flags: Mapping[str, Any],
                   config_file: str | os.PathLike | None = None,
                   resume_dir: str | os.PathLike | None = None) -> RunConfig:
    """The run's configuration (a ``config_class``, e.g. TrainConfig or FinetuneConfig) from the given flags
    (only those the user set), a file, and a run to resume.

    Raises ValueError for unknown settings, invalid values, or (on resume) a
    change to a setting that defines the run (one not in ``config_class.RESUME_OVERRIDABLE``).
    """
    file_values = read_config_file(config_file) if config_file else {}
    overrides = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    if resume_dir is None:
        return config_class.from_dict(overrides, source=str(config_file or "flags"))
    saved_path = Path(resume_dir) / CONFIG_NAME
    saved = config_class.from_dict(read_config_file(saved_path), source=str(saved_path))
    overrides.pop("out", None)
    if overrides.get("batch") == AUTO_BATCH:
        overrides.pop("batch")  # a resumed run keeps the batch planned when it started
    requested = config_class.from_dict({**saved.to_dict(), **overrides}, source="flags")
    changed = [k for k in overrides
               if k not in config_class.RESUME_OVERRIDABLE and getattr(requested, k) != getattr(saved, k)]
    if changed:
        raise ValueError(f"--resume continues the run in {resume_dir} as configured; these settings cannot change: "
                         f"{', '.join(sorted(changed))} (start a new run to change them)")
    requested.out = str(resume_dir)
    return requested


def config_from_arguments(args: Any, config_class: type[RunConfig]) -> RunConfig:
    """The configuration a ``gvsl pretrain`` / ``gvsl finetune`` command line asks for: a new run (DATA and
    ``--out``) or ``--resume RUN_DIR``; only the flags the user gave override (absent ones are not in ``args``)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    flags = {k: v for k, v in vars(args).items() if k in fields}
    if args.resume is None and ("data" not in flags or "out" not in flags):
        raise ValueError("give DATA and --out RUN_DIR for a new run, or --resume RUN_DIR")
    if args.resume is not None and flags.get("out", args.resume) != args.resume:
        raise ValueError("--resume RUN_DIR continues in RUN_DIR; leave out --out")
    return resolve_config(config_class, flags, args.config, args.resume)


def save_config(config: RunConfig, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/config.json`` atomically (never half written)."""
    return write_text_atomically(Path(run_dir) / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
