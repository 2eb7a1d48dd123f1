"""The pre-training run: run folder, cache, model, loop, checkpoints, events, stop.

Events written to ``RUN_DIR/events.jsonl`` (rank 0 only), besides ``event`` and ``time``:

- ``start``: ``iteration`` (first, 0 or the resumed one), ``iterations`` (total), ``resumed_from`` (path
  or null), ``device``, ``precision``, ``world_size``, ``cache``, ``config`` (resolved settings);
- ``iteration``: ``iteration``, ``iterations``, ``loss``, ``ncc``, ``mse``, ``smooth`` (means over the
  iterations since the previous ``iteration`` event, on rank 0's pairs), ``lr``, ``it_per_s``, ``eta_s``,
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

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from gvsl.checkpoints import gvsl_payload, load_checkpoint, load_gvsl, model_state_dict_matches, save_checkpoint
from gvsl.networks import DEFAULT_CHANNELS, GVSL
from gvsl.pretrain.step import LossWeights, TrainStep, enable_activation_checkpointing
from gvsl.train.config import DEFAULT_ARCHITECTURE, TrainConfig, save_config
from gvsl.train.device import (
    Precision,
    is_out_of_memory,
    peak_memory_bytes,
    select_device,
    select_precision,
    use_channels_last,
)
from gvsl.train.distributed import (
    DistributedContext,
    context_from_environment,
    destroy_process_group,
    init_process_group,
)
from gvsl.train.events import EVENTS_NAME, EventLog, Listener
from gvsl.train.panels import slice_panel
from gvsl.train.run import CACHE_NAME, TrainingError, prepare_run_dir
from gvsl.train.state import (
    checkpoint_path,
    derive_seed,
    latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
)
from gvsl.train.stopping import StopRequest, clear_stop_file


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
    from gvsl.data import PrepareConfig, cache_preprocessing, is_cache, prepare_cache

    if is_cache(config.data) and Path(config.data) == cache:
        cached = tuple(cache_preprocessing(cache)["target_spacing"])
        if config.spacing is not None and tuple(config.spacing) != cached:
            raise ValueError(f"{cache} was prepared at {cached} mm, not --spacing {config.spacing}: leave --spacing "
                             "out, or give the original data (or --cache DIR) to prepare again")
    prepare = PrepareConfig(target_spacing=config.spacing) if config.spacing else PrepareConfig()
    prepare_cache(Path(config.data), cache, config=prepare, workers=config.workers, progress=config.progress)


def build_model(config: TrainConfig, device: torch.device) -> GVSL:
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


class Trainer:
    """One process's part of a run (every rank builds one; only rank 0 writes files)."""

    def __init__(self, config: TrainConfig, run_dir: Path, cache: Path, context: DistributedContext,
                 device: torch.device, precision: Precision, events: EventLog, resume_from: Optional[Path]):
        from gvsl.augment import AugmentationConfig, GVSLAugmentation
        from gvsl.data import cache_preprocessing

        self.config, self.run_dir, self.cache = config, run_dir, cache
        self.preprocessing = cache_preprocessing(cache)  # recorded in checkpoints: matching must preprocess alike
        self.context, self.device, self.precision, self.events = context, device, precision, events
        payload = load_checkpoint(resume_from, map_location=device) if resume_from else None
        self.model = load_gvsl(payload, device=device)[0] if payload else build_model(config, device)
        channels_last = use_channels_last(config.channels_last, device, self.model.channels)
        if channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        self.iteration = 0
        if payload:
            self.optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
            restore_rng_state(payload.get("rng", {}))
            self.iteration = int(payload["iteration"])
        if config.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        network = self.model
        if context.enabled:
            network = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        weights = LossWeights(config.weight_ncc, config.weight_mse, config.weight_smooth, config.weight_ncc_affine,
                              config.weight_synthetic_affine)
        self.step = TrainStep(network, self.optimizer, self.scaler, GVSLAugmentation(AugmentationConfig()),
                              precision, device, weights, channels_last=channels_last,
                              synthetic_fraction=config.synthetic_fraction)
        self.writer = None
        if config.tensorboard and context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def save(self) -> Path:
        """Checkpoint the current state (rank 0), keep the newest ``keep_checkpoints``; returns the path."""
        path = checkpoint_path(self.run_dir, self.iteration)
        if self.context.is_main:
            payload = gvsl_payload(self.model, self.iteration, optimizer=self.optimizer.state_dict(),
                                   scaler=self.scaler.state_dict(), rng=rng_state(), config=self.config.to_dict(),
                                   preprocessing=self.preprocessing, initial_alignment=self.config.initial_alignment,
                                   world_size=self.context.world_size)
            save_checkpoint(path, payload)
            deleted = prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
            self.events.write("checkpoint", iteration=self.iteration, path=str(path), deleted=[str(p) for p in deleted])
        return path

    def log(self, sums: dict[str, torch.Tensor], count: int, seconds: float) -> None:
        """Write the ``iteration`` event and TensorBoard scalars for the last ``count`` iterations."""
        means = {k: float(v) / count for k, v in sums.items()}
        rate = count / max(seconds, 1e-9)
        memory, memory_kind = peak_memory_bytes(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.events.write("iteration", iteration=self.iteration, iterations=self.config.iterations, **means, lr=lr,
                          it_per_s=rate, eta_s=(self.config.iterations - self.iteration) / rate,
                          peak_memory_bytes=memory, memory_kind=memory_kind)
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"loss/{name}", value, self.iteration)
            self.writer.add_scalar("lr", lr, self.iteration)
            self.writer.add_scalar("iterations_per_second", rate, self.iteration)

    def add_panel(self, views: tuple[torch.Tensor, ...]) -> None:
        """TensorBoard image: middle slices of A, B, warped B, restored A (columns)."""
        if self.writer is not None:
            self.writer.add_image("panels/A_B_warpedB_restoredA", slice_panel(views)[None], self.iteration,
                                  dataformats="CHW")

    def train(self, stop: StopRequest) -> bool:
        """Iterate until ``config.iterations`` or a stop; returns whether a stop ended it (after saving)."""
        config, total = self.config, self.config.iterations
        bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True,
                   disable=not (config.progress and self.context.is_main))
        batches, segment = None, None
        sums: dict[str, torch.Tensor] = {}
        count, tick = 0, time.perf_counter()
        stopped = False
        try:
            while self.iteration < total:
                if segment != self.iteration // config.checkpoint_every:
                    segment = self.iteration // config.checkpoint_every
                    batches = pair_batches(self.cache, config, self.context, self.device, self.iteration)
                a, b = next(batches)
                generator = torch.Generator(self.device)
                generator.manual_seed(derive_seed(config.seed, "augment", self.context.rank, self.iteration))
                out = self.step(a, b, generator, keep_views=(self.iteration + 1) % config.image_every == 0)
                self.iteration += 1
                bar.update(1)
                for name, value in out.losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
                if self.iteration % config.log_every == 0 or self.iteration == total:
                    self.log(sums, count, time.perf_counter() - tick)
                    bar.set_postfix(loss=f"{float(sums['loss']) / count:.4f}")
                    sums, count, tick = {}, 0, time.perf_counter()
                if out.views is not None:
                    self.add_panel(out.views)
                stopped = self.context.any(stop.requested(), self.device)
                if stopped or self.iteration % config.checkpoint_every == 0 or self.iteration == total:
                    self.save()
                if stopped:
                    self.events.write("stop", iteration=self.iteration, reason=stop.reason or "another rank")
                    break
        finally:
            bar.close()
            del batches  # shuts data loader workers down
        return stopped

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_training(config: TrainConfig, *, resume: bool = False, on_event: Optional[Listener] = None) -> TrainResult:
    """Run (or resume) pre-training as configured; ``config.out`` is the run folder.

    Works in one process or under ``torchrun`` (every rank calls this).
    ``on_event`` receives each event record (rank 0), e.g. to print progress.
    Raises ValueError (bad input, wrong checkpoint), ``gvsl.data.NoUsableDataError``,
    TrainingError (out of memory, unwritable folder, with advice) after
    writing an ``error`` event where possible; checkpoints already written stay intact.
    """
    if config.out is None:
        raise ValueError("no run folder given (--out RUN_DIR)")
    run_dir = Path(config.out)
    context = context_from_environment()
    device = select_device(config.device, context.local_rank)
    precision = select_precision(config.precision, device)
    init_process_group(context, device)
    events, trainer, started = None, None, time.perf_counter()
    try:
        if context.is_main:
            prepare_run_dir(run_dir, resume)
        context.barrier()
        events = EventLog(run_dir / EVENTS_NAME if context.is_main else None, on_event if context.is_main else None)
        resume_from = latest_checkpoint(run_dir) if resume else None
        if resume:
            cache = Path(config.cache)
            if context.is_main:
                clear_stop_file(run_dir)
        else:
            cache = cache_location(config, run_dir)
            if context.is_main:  # a cache given as DATA is only checked against its manifest
                prepare_training_cache(config, cache)
            context.barrier()
        trainer = Trainer(config, run_dir, cache, context, device, precision, events, resume_from)
        model = trainer.model
        config = replace(config, cache=str(cache), channels=tuple(model.channels), conventions=model.conventions,
                         architecture=model.architecture)
        trainer.config = config
        if context.is_main:
            save_config(config, run_dir)
        events.write("start", iteration=trainer.iteration, iterations=config.iterations,
                     resumed_from=str(resume_from) if resume_from else None, device=str(device),
                     precision=precision.name, world_size=context.world_size, cache=str(cache),
                     config=config.to_dict())
        with StopRequest(run_dir, config.time_limit_s) as stop:
            if trainer.iteration >= config.iterations:
                stopped = False
            else:
                stopped = trainer.train(stop)
        last = latest_checkpoint(run_dir) if context.is_main else checkpoint_path(run_dir, trainer.iteration)
        events.write("end", iteration=trainer.iteration, checkpoint=str(last) if last else None, stopped=stopped,
                     elapsed_s=round(time.perf_counter() - started, 3))
        context.barrier()
        return TrainResult(run_dir, trainer.iteration, stopped, last, model)
    except BaseException as exc:
        error: BaseException = exc
        if is_out_of_memory(exc):
            error = TrainingError(
                f"out of memory on {device} with patch {'x'.join(map(str, config.patch))}, batch {config.batch}: "
                "lower --patch, --batch or --channels, or add --activation-checkpointing"
                + (" or --precision bf16/fp16" if device.type == "cuda" and precision.name == "fp32" else ""))
        if events is not None:
            events.write("error", iteration=trainer.iteration if trainer else None, type=type(error).__name__,
                         message=str(error) or type(error).__name__)
        if error is exc:
            raise
        raise error from exc
    finally:
        if trainer is not None:
            trainer.close()
        if events is not None:
            events.close()
        destroy_process_group(context)
