"""A training run: its folder, and the lifecycle every run shares (pre-training, ``gvsl.pretrain``, and
fine-tuning, ``gvsl.finetune``).

``run_lifecycle`` runs in every process (one, or each rank under ``torchrun``): it chooses the device and
precision, joins the process group, checks or creates the run folder, opens the event log (rank 0 writes
``RUN_DIR/events.jsonl``), clears a STOP file left by the stop that a resumed run continues from, saves the
resolved configuration, writes the ``start`` and ``end`` events (``error`` on failure, with advice when out of
memory), and closes everything however the run ends. ``Trainer.train`` is the loop: the ``iteration``,
``checkpoint`` and ``stop`` events, checkpoints every ``checkpoint_every`` iterations and at a stop request.
A ``Trainer`` subclass supplies what differs (nnU-Net's hook idea): how the run's data are prepared and the
network built (``prepare``), its batches, its ``step``, its validation, its checkpoint payload and the extra fields
of its events.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator, NamedTuple, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gvsl.checkpoints import load_checkpoint, save_checkpoint
from gvsl.train.config import CONFIG_NAME, RunConfig, save_config
from gvsl.train.device import Precision, is_out_of_memory, peak_memory_bytes, select_device, select_precision
from gvsl.train.distributed import (
    DistributedContext,
    context_from_environment,
    destroy_process_group,
    init_process_group,
)
from gvsl.train.events import EVENTS_NAME, EventLog, Listener
from gvsl.train.state import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    restore_rng_state,
)
from gvsl.train.stopping import StopRequest, clear_stop_file

CACHE_NAME = "cache"  # the run's cache folder inside the run folder, unless --cache names another


class TrainingError(RuntimeError):
    """A failure whose message tells the user what to do."""


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create/check the run folder before anything is trained; ValueError/TrainingError with a clear message.

    A new run refuses a folder holding checkpoints (nothing trained is
    overwritten; a folder left by a run that failed before its first
    checkpoint is reused, its events appended to); a resumed run needs its
    config and a checkpoint. Both need write access.
    """
    if resume:
        if not (run_dir / CONFIG_NAME).is_file() or latest_checkpoint(run_dir) is None:
            raise ValueError(f"{run_dir} holds no run to resume (needs {CONFIG_NAME} and a checkpoint)")
    elif list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {run_dir}: {exc.strerror}; "
                            "choose a writable --out") from exc


class Trainer:
    """One process's part of a run (every rank builds one; only rank 0 writes files).

    A subclass builds its network and optimiser, calls ``__init__``, and supplies the hooks: ``prepare`` (the
    run's data, then the trainer), ``batches``, ``step`` and ``checkpoint_payload``; ``validate_if_due``,
    ``start_fields``, ``end_fields`` and ``stop_request`` have defaults. Its class attributes say what the
    out-of-memory advice suggests and what its periodic ``checkpoint`` events add.
    """

    # Out-of-memory advice: what to lower, and what to add on CUDA in float32.
    MEMORY_REMEDIES: ClassVar[str] = "lower --patch, --batch or --channels"
    PRECISION_REMEDY: ClassVar[str] = " or use --precision bf16/fp16"
    CHECKPOINT_FIELDS: ClassVar[dict[str, Any]] = {}  # extra fields of the periodic ``checkpoint`` events

    def __init__(self, config: RunConfig, run_dir: Path, context: DistributedContext, device: torch.device,
                 precision: Precision, events: EventLog, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 payload: Optional[dict]):
        """``model``: the network on ``device``, trained through ``optimizer``. ``payload``: the checkpoint a
        resumed run continues from (None for a new run): the optimiser, gradient scaler, random generators and
        iteration are restored from it (the subclass has restored the model). Under several processes the
        network is wrapped for data-parallel training (``self.network``; ``self.model`` is the bare one)."""
        self.config, self.run_dir = config, run_dir
        self.context, self.device, self.precision, self.events = context, device, precision, events
        self.model, self.optimizer = model, optimizer
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        self.iteration = 0
        if payload:
            self.optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
            restore_rng_state(payload.get("rng", {}))
            self.iteration = int(payload["iteration"])
        self.network = model
        if context.enabled:
            self.network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.writer = None
        if config.tensorboard and context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    @classmethod
    def prepare(cls, config: RunConfig, run_dir: Path, context: DistributedContext, device: torch.device,
                precision: Precision, events: EventLog, payload: Optional[dict]) -> Trainer:
        """Prepare the run's data (rank 0; the others wait) and build the trainer, resuming from ``payload``
        when given; the trainer's ``config`` is the one to save (completed with what the run found)."""
        raise NotImplementedError

    def batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """This process's batches for iterations ``iteration + 1``, ... (each one ``step``'s arguments)."""
        raise NotImplementedError

    def step(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on ``batch``; the detached scalar losses (``loss`` and its terms)."""
        raise NotImplementedError

    def checkpoint_payload(self) -> dict[str, Any]:
        """What a periodic checkpoint holds: enough to resume exactly."""
        raise NotImplementedError

    def validate_if_due(self) -> dict[str, Any]:
        """Validate if this iteration calls for it; the fields it adds to the ``iteration`` event (none here)."""
        return {}

    def start_fields(self) -> dict[str, Any]:
        """What the ``start`` event adds to the common fields (nothing here)."""
        return {}

    def end_fields(self) -> dict[str, Any]:
        """What the ``end`` event adds to the common fields (nothing here)."""
        return {}

    def stop_request(self) -> StopRequest:
        """What stops the run early: a signal or the STOP file."""
        return StopRequest(self.run_dir)

    def save(self) -> Path:
        """Checkpoint the current state (rank 0), keep the newest ``keep_checkpoints``; returns the path."""
        path = checkpoint_path(self.run_dir, self.iteration)
        if self.context.is_main:
            save_checkpoint(path, self.checkpoint_payload())
            deleted = prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
            self.events.write("checkpoint", iteration=self.iteration, path=str(path), **self.CHECKPOINT_FIELDS,
                              deleted=[str(p) for p in deleted])
        return path

    def log(self, sums: dict[str, torch.Tensor], count: int, seconds: float, validation: dict[str, Any]) -> dict:
        """Write the ``iteration`` event (loss means over the last ``count`` iterations, which took ``seconds``, and
        the ``validation`` fields) and the TensorBoard scalars of the losses and learning rate; returns the event."""
        means = {k: float(v) / count for k, v in sums.items()}
        rate = count / max(seconds, 1e-9)
        memory, memory_kind = peak_memory_bytes(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        record = self.events.write("iteration", iteration=self.iteration, iterations=self.config.iterations, **means,
                                   lr=lr, it_per_s=rate, eta_s=(self.config.iterations - self.iteration) / rate,
                                   peak_memory_bytes=memory, memory_kind=memory_kind, **validation)
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"loss/{name}", value, self.iteration)
            self.writer.add_scalar("lr", lr, self.iteration)
        return record

    def train(self, stop: StopRequest) -> bool:
        """Iterate until ``config.iterations`` or a stop; returns whether a stop ended it (after saving)."""
        config, total = self.config, self.config.iterations
        bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True,
                   disable=not (config.progress and self.context.is_main))
        sums: dict[str, torch.Tensor] = {}
        count, tick, stopped = 0, time.perf_counter(), False
        self.model.train()
        batches = self.batches()
        try:
            while self.iteration < total:
                losses = self.step(*next(batches))
                self.iteration += 1
                bar.update(1)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
                validation = self.validate_if_due()
                if validation or self.iteration % config.log_every == 0 or self.iteration == total:
                    self.log(sums, count, time.perf_counter() - tick, validation)
                    bar.set_postfix(loss=f"{float(sums['loss']) / count:.4f}")
                    sums, count, tick = {}, 0, time.perf_counter()
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


class RunOutcome(NamedTuple):
    """How a run ended in this process: its ``trainer`` (network, last ``iteration``), whether a stop ended it,
    and the last checkpoint."""

    trainer: Trainer
    stopped: bool
    checkpoint: Optional[Path]


def run_lifecycle(trainer_class: type[Trainer], config: RunConfig, *, resume: bool,
                  on_event: Optional[Listener], stop_folders: Sequence[os.PathLike] = ()) -> RunOutcome:
    """Run (or resume) a run of ``trainer_class`` as configured; ``config.out`` is the run folder.

    Every process calls this (one, or each rank under ``torchrun``). ``on_event`` receives each event record
    (rank 0). A ``STOP`` file in any of ``stop_folders`` stops the run as its own does. Raises ValueError (bad
    input, wrong checkpoint), TrainingError (out of memory, with ``trainer_class``'s advice; unwritable folder) and
    whatever the trainer raises, after writing an ``error`` event where possible; checkpoints already written stay
    intact.
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
        if resume and context.is_main:
            clear_stop_file(run_dir)
        payload = load_checkpoint(resume_from, map_location=device) if resume_from else None
        trainer = trainer_class.prepare(config, run_dir, context, device, precision, events, payload)
        del payload  # its tensors are in the trainer's model and optimiser now
        config = trainer.config
        if context.is_main:
            save_config(config, run_dir)
        events.write("start", iteration=trainer.iteration, iterations=config.iterations,
                     resumed_from=str(resume_from) if resume_from else None, device=str(device),
                     precision=precision.name, world_size=context.world_size, cache=config.cache,
                     config=config.to_dict(), **trainer.start_fields())
        with trainer.stop_request().watch(*stop_folders) as stop:
            stopped = trainer.train(stop) if trainer.iteration < config.iterations else False
        last = latest_checkpoint(run_dir) if context.is_main else checkpoint_path(run_dir, trainer.iteration)
        events.write("end", iteration=trainer.iteration, checkpoint=str(last) if last else None, stopped=stopped,
                     **trainer.end_fields(), elapsed_s=round(time.perf_counter() - started, 3))
        context.barrier()
        return RunOutcome(trainer, stopped, last)
    except BaseException as exc:
        error: BaseException = exc
        if is_out_of_memory(exc):
            error = TrainingError(
                f"out of memory on {device} with patch {'x'.join(map(str, config.patch))}, batch {config.batch}: "
                + trainer_class.MEMORY_REMEDIES
                + (trainer_class.PRECISION_REMEDY if device.type == "cuda" and precision.name == "fp32" else ""))
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
