"""The pre-training run: cache, network, pair batches and step; its lifecycle is ``gvsl.train.run``'s.

Events written to ``RUN_DIR/events.jsonl`` (rank 0 only), besides ``event`` and ``time``:

- ``start``: ``iteration`` (first, 0 or the resumed one), ``iterations`` (total), ``resumed_from`` (path
  or null), ``device``, ``precision``, ``world_size``, ``cache``, ``config`` (resolved settings), ``memory_plan``
  (what ``--batch auto`` chose on a GPU, ``gvsl.train.memory_plan.MemoryPlan``; null otherwise), ``warnings``
  (the plan's message);
- ``iteration``: ``iteration``, ``iterations``, ``loss``, ``ncc``, ``mse``, ``smooth`` (and ``ncc_affine``,
  ``synthetic_affine`` when those terms are on; means over the iterations since the previous ``iteration``
  event, on rank 0's pairs), ``lr``, ``it_per_s``, ``eta_s``,
  ``peak_memory_bytes`` and ``memory_kind`` (see ``gvsl.train.device.peak_memory_bytes``);
- ``checkpoint``: ``iteration``, ``path``, ``deleted`` (older checkpoints removed to keep the last K);
- ``stop``: ``iteration``, ``reason`` (``SIGINT``, ``SIGTERM``, ``STOP file`` or ``time limit``);
- ``error``: ``iteration`` (or null), ``type``, ``message``: the run ended on this error;
- ``end``: ``iteration``, ``checkpoint`` (the last one), ``stopped``, ``elapsed_s``.

Exact resume: the augmentation of iteration i on rank r uses a generator
seeded from (seed, r, i), and the pair stream restarts at every checkpoint
boundary (multiples of ``checkpoint_every``) from a seed derived from
(seed, boundary); a run resumed from a checkpoint taken off a boundary (a
stop) draws and discards the pairs up to it. So interrupted + resumed equals
uninterrupted (bit for bit on CPU with the same thread count) provided
``checkpoint_every``, ``workers`` and the number of processes are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader

from gvsl.checkpoints import gvsl_payload, load_gvsl, model_state_dict_matches
from gvsl.networks import DEFAULT_CHANNELS, GVSL
from gvsl.pretrain.step import LossWeights, TrainStep, enable_activation_checkpointing
from gvsl.train.auto_batch import resolve_batch
from gvsl.train.config import DEFAULT_ARCHITECTURE, TrainConfig
from gvsl.train.device import Precision, use_channels_last
from gvsl.train.distributed import DistributedContext
from gvsl.train.events import EventLog, Listener
from gvsl.train.panels import slice_panel
from gvsl.train.run import CACHE_NAME, Trainer, run_lifecycle
from gvsl.train.state import derive_seed, rng_state
from gvsl.train.stopping import StopRequest


@dataclass
class TrainResult:
    """How a run ended: its last ``iteration``, whether a stop was requested, the last checkpoint, the network."""

    run_dir: Path
    iteration: int
    stopped: bool
    checkpoint: Optional[Path]
    model: GVSL


def cache_location(config: TrainConfig, run_dir: Path) -> Path:
    """The cache folder: DATA itself when it is a cache and no ``--cache`` is given, else ``--cache`` or
    ``RUN_DIR/cache`` (DATA is prepared into it, or the cache updated)."""
    from gvsl.data import is_cache

    if config.data is None:
        raise ValueError("no DATA given: a DICOM folder, a folder of volumes, or a prepared cache")
    if config.cache is None and is_cache(config.data):
        return Path(config.data)
    return Path(config.cache) if config.cache else run_dir / CACHE_NAME


def prepare_training_cache(config: TrainConfig, cache: Path) -> None:
    """Prepare DATA into ``cache`` at ``config.spacing`` (1 mm by default), or check DATA when it is the cache.

    A cache given as DATA keeps its own grid: a ``spacing`` that differs from it raises ValueError.
    """
    from gvsl.data import cache_preprocessing, is_cache, prepare_cache

    if is_cache(config.data) and Path(config.data) == cache:
        cached = tuple(cache_preprocessing(cache)["target_spacing"])
        if config.spacing is not None and tuple(config.spacing) != cached:
            raise ValueError(f"{cache} was prepared at {cached} mm, not --spacing {config.spacing}: leave --spacing "
                             "out, or give the original data (or --cache DIR) to prepare again")
        prepare = None  # only checked: no preprocessing (nor SimpleITK) needed
    else:
        from gvsl.data import PrepareConfig

        prepare = PrepareConfig(target_spacing=config.spacing) if config.spacing else PrepareConfig()
    prepare_cache(Path(config.data), cache, config=prepare, workers=config.workers, progress=config.progress)


def build_gvsl(config: TrainConfig, device: torch.device) -> GVSL:
    """A fresh network (seeded from ``config.seed``) or the ``config.init`` checkpoint's weights.

    An ``init`` whose widths or architecture differ from ``config.channels`` / ``config.architecture`` raises
    ValueError naming the mismatched keys.
    """
    if config.init is None:
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = GVSL(channels=config.channels or DEFAULT_CHANNELS, conventions=config.conventions or "corrected",
                     architecture=config.architecture or DEFAULT_ARCHITECTURE)
    else:
        model, info = load_gvsl(config.init, conventions=config.conventions)
        channels, architecture = tuple(config.channels or info.channels), config.architecture or info.architecture
        if (channels, architecture) != (info.channels, info.architecture):  # raises, naming what does not fit
            model_state_dict_matches(GVSL(channels=channels, conventions=info.conventions, architecture=architecture),
                                     model.state_dict())
    return model.to(device)


def pair_batches(cache: Path, config: TrainConfig, context: DistributedContext, device: torch.device,
                 iteration: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of pairs for iterations ``iteration + 1``, ... up to the next checkpoint boundary.

    The stream of each segment between boundaries depends only on (seed, the
    segment's first iteration, rank, world size, workers), so it restarts
    identically on resume; pairs before ``iteration`` in the segment are drawn and discarded.
    """
    from gvsl.data import PairDataset

    start = iteration - iteration % config.checkpoint_every
    dataset = PairDataset(cache, patch_size=config.patch, seed=derive_seed(config.seed, "data", start) & 0x7FFFFFFF,
                          rank=context.rank, world_size=context.world_size, alignment=config.initial_alignment)
    loader = DataLoader(dataset, batch_size=config.batch, num_workers=config.workers,
                        pin_memory=device.type == "cuda")
    batches = iter(loader)
    for _ in range(iteration - start):
        next(batches)
    return batches


class PretrainTrainer(Trainer):
    """One process's part of a pre-training run: pairs of cached scans, the GVSL step, panels in TensorBoard."""

    MEMORY_REMEDIES = "lower --patch, --batch or --channels, or add --activation-checkpointing"
    PRECISION_REMEDY = " or --precision bf16/fp16"

    def __init__(self, config: TrainConfig, run_dir: Path, cache: Path, context: DistributedContext,
                 device: torch.device, precision: Precision, events: EventLog, payload: Optional[dict]):
        from gvsl.augment import AugmentationConfig, GVSLAugmentation
        from gvsl.data import cache_preprocessing

        self.cache = cache
        self.preprocessing = cache_preprocessing(cache)  # recorded in checkpoints: matching must preprocess alike
        model = load_gvsl(payload, device=device)[0] if payload else build_gvsl(config, device)
        channels_last = use_channels_last(config.channels_last, device, model.channels, precision)
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        config, self.memory_plan = resolve_batch(config, model, device, precision, context)  # --batch auto
        if config.activation_checkpointing:
            enable_activation_checkpointing(model)
        super().__init__(config, run_dir, context, device, precision, events, model, optimizer, payload)
        weights = LossWeights(config.weight_ncc, config.weight_mse, config.weight_smooth, config.weight_ncc_affine,
                              config.weight_synthetic_affine)
        self.train_step = TrainStep(self.network, self.optimizer, self.scaler, GVSLAugmentation(AugmentationConfig()),
                                    precision, device, weights, channels_last=channels_last,
                                    synthetic_fraction=config.synthetic_fraction)

    @classmethod
    def prepare(cls, config: TrainConfig, run_dir: Path, context: DistributedContext, device: torch.device,
                precision: Precision, events: EventLog, payload: Optional[dict]) -> PretrainTrainer:
        """Prepare DATA into the cache or check it (new run; rank 0, the others wait), then build the trainer; its
        ``config`` records the cache, the network's widths, conventions and architecture, and what ``--batch
        auto`` resolved to (batch, crop, activation checkpointing)."""
        if payload:
            cache = Path(config.cache)
        else:
            cache = cache_location(config, run_dir)
            if context.is_main:  # a cache given as DATA is only checked against its manifest
                prepare_training_cache(config, cache)
            context.barrier()
        trainer = cls(config, run_dir, cache, context, device, precision, events, payload)
        model = trainer.model
        trainer.config = replace(trainer.config, cache=str(cache), channels=tuple(model.channels),
                                 conventions=model.conventions, architecture=model.architecture)
        return trainer

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs (A, B), each (batch, 1, D, H, W) float32 in [0, 1], for iterations ``iteration + 1``, ...: a new
        ``pair_batches`` stream at every checkpoint boundary."""
        every = self.config.checkpoint_every
        while True:
            pairs = pair_batches(self.cache, self.config, self.context, self.device, self.iteration)
            for _ in range(every - self.iteration % every):
                yield next(pairs)

    def step(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on the pairs ``a``, ``b`` augmented as this rank's iteration is; every ``image_every``
        iterations the TensorBoard panel of the first pair."""
        generator = torch.Generator(self.device)
        generator.manual_seed(derive_seed(self.config.seed, "augment", self.context.rank, self.iteration))
        iteration = self.iteration + 1  # the one this step completes
        out = self.train_step(a, b, generator, keep_views=iteration % self.config.image_every == 0)
        if out.views is not None:
            self.add_panel(out.views, iteration)
        return out.losses

    def start_fields(self) -> dict:
        """The ``--batch auto`` plan, and its message as a note."""
        plan = self.memory_plan
        return {"memory_plan": plan.to_dict() if plan else None, "warnings": [plan.message] if plan else []}

    def checkpoint_payload(self) -> dict:
        return gvsl_payload(self.model, self.iteration, optimizer=self.optimizer.state_dict(),
                            scaler=self.scaler.state_dict(), rng=rng_state(), config=self.config.to_dict(),
                            preprocessing=self.preprocessing, initial_alignment=self.config.initial_alignment,
                            world_size=self.context.world_size)

    def stop_request(self) -> StopRequest:
        """A signal, the STOP file or ``time_limit_s``."""
        return StopRequest(self.run_dir, self.config.time_limit_s)

    def log(self, sums: dict[str, torch.Tensor], count: int, seconds: float, validation: dict) -> dict:
        """As ``Trainer.log``, and the iteration rate in TensorBoard."""
        record = super().log(sums, count, seconds, validation)
        if self.writer is not None:
            self.writer.add_scalar("iterations_per_second", record["it_per_s"], self.iteration)
        return record

    def add_panel(self, views: tuple[torch.Tensor, ...], iteration: int) -> None:
        """TensorBoard image at ``iteration``: middle slices of A, B, warped B, restored A (columns)."""
        if self.writer is not None:
            self.writer.add_image("panels/A_B_warpedB_restoredA", slice_panel(views)[None], iteration,
                                  dataformats="CHW")


def run_training(config: TrainConfig, *, resume: bool = False, on_event: Optional[Listener] = None) -> TrainResult:
    """Run (or resume) pre-training as configured; ``config.out`` is the run folder.

    Works in one process or under ``torchrun`` (every rank calls this).
    ``on_event`` receives each event record (rank 0), e.g. to print progress.
    Raises ValueError (bad input, wrong checkpoint), ``gvsl.data.NoUsableDataError``,
    TrainingError (out of memory, unwritable folder, with advice) after
    writing an ``error`` event where possible; checkpoints already written stay intact.
    """
    trainer, stopped, last = run_lifecycle(PretrainTrainer, config, resume=resume, on_event=on_event)
    return TrainResult(trainer.run_dir, trainer.iteration, stopped, last, trainer.model)
