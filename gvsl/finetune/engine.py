"""The fine-tuning run: cases and cache, label table, model, loop with validation, checkpoints, events, stop.

Run folder: ``config.json``, ``labels.json`` (label table), ``cache/`` (unless ``--cache``), ``checkpoints/``
(``iter_NNNNNN.pt``, the last K, resumable), ``best.pt`` (highest mean validation Dice), ``events.jsonl``,
``tensorboard/``. Checkpoints are ``gvsl.segment.model`` payloads (``"format": "gvsl-seg"``).

Events (``gvsl.train.events``), besides ``event`` and ``time``:

- ``start``: as pre-training, plus ``mode``, ``train_cases``, ``val_cases`` (names), ``labels`` (the table),
  ``warnings`` (e.g. validation reusing the only case);
- ``iteration``: ``iteration``, ``iterations``, ``loss``, ``dice_loss``, ``ce`` (means since the previous
  event), ``lr``, ``it_per_s``, ``eta_s``, ``peak_memory_bytes``, ``memory_kind``; at validation iterations also
  ``val_dice`` (mean over labels), ``val_dice_per_class`` (label name -> Dice, null where no case has the label),
  ``best_dice``;
- ``checkpoint`` (``iteration``, ``path``, ``deleted``, ``best``), ``stop``, ``error``, ``end`` (plus ``best``
  and ``best_dice``).

Exact resume: the batch of iteration i is a pure function of (seed, rank, i) (``PatchBatches``) and so is its
augmentation; model, optimiser, scaler and best Dice come from the checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from gvsl.checkpoints import load_checkpoint, save_checkpoint
from gvsl.data.preprocess import PrepareConfig
from gvsl.finetune.augment import augment_patches
from gvsl.finetune.cache import CachedCase, open_prepared, prepare_cases
from gvsl.finetune.config import FinetuneConfig
from gvsl.finetune.data import find_cases
from gvsl.finetune.model import build_model
from gvsl.finetune.sampling import PatchBatches
from gvsl.finetune.validation import choose_validation_windows, volume_dice, window_dice
from gvsl.labels import (
    LabelTable,
    complete_label_table,
    label_values,
    make_label_table,
    read_label_table,
    write_label_table,
)
from gvsl.segment.model import BEST_NAME, SegmentationInfo, SegmentationNet, segmentation_payload
from gvsl.train.config import save_config
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

LABELS_NAME = "labels.json"


@dataclass
class FinetuneResult:
    """How a run ended: last ``iteration``, whether a stop ended it, the last and best checkpoints, best Dice."""

    run_dir: Path
    iteration: int
    stopped: bool
    checkpoint: Optional[Path]
    best: Optional[Path]
    best_dice: Optional[float]
    model: SegmentationNet


def choose_label_table(config: FinetuneConfig, found: Optional[Path], present: set[int]) -> LabelTable:
    """``--labels``, else the table found with the data, else values as names; limited to the values present
    in the label maps and completed with those it lacks (a listed structure that no case contains is dropped,
    as the model could never learn it)."""
    source = config.labels or found
    table = read_label_table(source) if source else make_label_table(present)
    table = {"labels": [e for e in table["labels"] if e["value"] in present]}
    return complete_label_table(table, present)


def split_cases(cases: list[CachedCase], fraction: float, seed: int) -> tuple[list[CachedCase], list[CachedCase]]:
    """(training, validation) cases: ``fraction`` of them (at least one) held out at random; a single case (or
    ``fraction`` 0) is used for both."""
    if len(cases) == 1 or fraction == 0:
        return cases, cases
    order = np.random.default_rng(derive_seed(seed, "split")).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, round(fraction * len(cases))))
    return [cases[i] for i in sorted(order[n_val:])], [cases[i] for i in sorted(order[:n_val])]


def learning_rate(config: FinetuneConfig, iteration: int) -> float:
    """The learning rate of the update after ``iteration`` updates (a pure function: resume needs no state)."""
    if config.schedule == "constant":
        return config.lr
    return config.lr * (1.0 - iteration / config.iterations) ** 0.9


class FinetuneTrainer:
    """One process's part of a fine-tuning run (rank 0 writes files and validates)."""

    def __init__(self, config: FinetuneConfig, run_dir: Path, table: LabelTable, train_cases: list[CachedCase],
                 val_cases: list[CachedCase], preprocessing: dict, context: DistributedContext,
                 device: torch.device, precision: Precision, events: EventLog, resume_from: Optional[Path]):
        self.config, self.run_dir, self.table = config, run_dir, table
        self.val_cases, self.preprocessing = val_cases, preprocessing
        self.context, self.device, self.precision, self.events = context, device, precision, events
        self.values = label_values(table)
        payload = load_checkpoint(resume_from, map_location=device) if resume_from else None
        if payload:
            self.model = SegmentationNet(len(self.values) + 1, payload["channels"])
            self.model.load_state_dict(payload["model"])
            self.model.unet.requires_grad_(config.mode != "linear")
        else:
            self.model = build_model(config.mode, len(self.values) + 1, config.seed, config.init, config.channels)
        channels_last = use_channels_last(None, device, self.model.channels)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.model.to(device, memory_format=self.memory_format)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        self.iteration, self.best_dice = 0, None
        if payload:
            self.optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
            restore_rng_state(payload.get("rng", {}))
            self.iteration, self.best_dice = int(payload["iteration"]), payload.get("best_dice")
        self.network = self.model
        if context.enabled:
            self.network = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                   else None)
        self.dice_loss = DiceLoss(to_onehot_y=True, softmax=True)
        self.batches = PatchBatches(train_cases, self.values, config.patch, config.batch, config.foreground,
                                    derive_seed(config.seed, "data"), context.rank)
        self.val_windows = None
        if config.val_windows and context.is_main:
            self.val_windows = choose_validation_windows(val_cases, self.values, config.patch, config.val_windows,
                                                         config.foreground, derive_seed(config.seed, "validation"))
        self.writer = None
        if config.tensorboard and context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def info(self) -> SegmentationInfo:
        return SegmentationInfo(self.model.channels, self.model.n_classes, self.table, self.preprocessing,
                                self.config.patch, self.config.mode, self.iteration)

    def step(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on a batch (image (N, 1, D, H, W) float, label (N, 1, D, H, W) int64); detached losses."""
        image = image.to(self.device, non_blocking=True)
        label = label.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.iteration)
        if self.config.augment:
            generator = torch.Generator(self.device)
            generator.manual_seed(derive_seed(self.config.seed, "augment", self.context.rank, self.iteration))
            image, label = augment_patches(image, label, generator)
        with self.precision.autocast(self.device):
            logits = self.network(image.contiguous(memory_format=self.memory_format))
        logits = logits.float()
        terms = {"dice_loss": self.dice_loss(logits, label), "ce": F.cross_entropy(logits, label[:, 0])}
        loss = terms["dice_loss"] + terms["ce"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def save(self) -> Path:
        """Checkpoint the current state (rank 0), keep the newest ``keep_checkpoints``; returns the path."""
        path = checkpoint_path(self.run_dir, self.iteration)
        if self.context.is_main:
            save_checkpoint(path, segmentation_payload(
                self.model, self.info(), optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                rng=rng_state(), config=self.config.to_dict(), best_dice=self.best_dice,
                world_size=self.context.world_size))
            deleted = prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
            self.events.write("checkpoint", iteration=self.iteration, path=str(path), best=False,
                              deleted=[str(p) for p in deleted])
        return path

    def validate(self) -> dict:
        """Validate (rank 0), save ``best.pt`` on a new best mean Dice; returns the event fields."""
        memory_format = self.memory_format
        if self.val_windows is not None:
            result = window_dice(self.model, self.val_windows, len(self.values) + 1, self.config.batch,
                                 self.precision, self.device, memory_format)
        else:
            result = volume_dice(self.model, self.val_cases, self.values, self.config.patch, self.config.batch,
                                 self.precision, self.device, memory_format)
        dice, mean = result.dice, result.mean_dice
        if mean is not None and (self.best_dice is None or mean > self.best_dice):
            self.best_dice = mean
            path = save_checkpoint(self.run_dir / BEST_NAME, segmentation_payload(
                self.model, self.info(), config=self.config.to_dict(), best_dice=mean))
            self.events.write("checkpoint", iteration=self.iteration, path=str(path), best=True, deleted=[])
        names = [e["name"] for e in self.table["labels"]]
        if self.writer is not None:
            if mean is not None:
                self.writer.add_scalar("val/dice", mean, self.iteration)
            for name, d in zip(names, dice):
                if d is not None:
                    self.writer.add_scalar(f"val/dice/{name}", d, self.iteration)
            views = (result.image, result.truth > 0, result.predicted / max(1, len(names)))
            self.writer.add_image("val/image_label_prediction", slice_panel(views)[None], self.iteration,
                                  dataformats="CHW")
        return {"val_dice": mean, "val_dice_per_class": dict(zip(names, dice)), "best_dice": self.best_dice}

    def log(self, sums: dict[str, torch.Tensor], count: int, seconds: float, extra: dict) -> None:
        means = {k: float(v) / count for k, v in sums.items()} if count else {}
        rate = count / max(seconds, 1e-9)
        memory, memory_kind = peak_memory_bytes(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.events.write("iteration", iteration=self.iteration, iterations=self.config.iterations, **means, lr=lr,
                          it_per_s=rate, eta_s=(self.config.iterations - self.iteration) / max(rate, 1e-9),
                          peak_memory_bytes=memory, memory_kind=memory_kind, **extra)
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"loss/{name}", value, self.iteration)
            self.writer.add_scalar("lr", lr, self.iteration)

    def train(self, stop: StopRequest) -> bool:
        """Iterate until ``config.iterations`` or a stop; returns whether a stop ended it (after saving)."""
        config, total = self.config, self.config.iterations
        loader = DataLoader(self.batches, batch_size=None, sampler=range(self.iteration, total),
                            num_workers=config.workers, pin_memory=self.device.type == "cuda")
        bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True,
                   disable=not (config.progress and self.context.is_main))
        sums: dict[str, torch.Tensor] = {}
        count, tick, stopped = 0, time.perf_counter(), False
        self.model.train()
        batches = iter(loader)
        try:
            for image, label in batches:
                losses = self.step(image, label)
                self.iteration += 1
                bar.update(1)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
                last = self.iteration == total
                extra = {}
                if self.iteration % config.val_every == 0 or last:
                    if self.context.is_main:
                        extra = self.validate()
                    self.context.barrier()
                if extra or self.iteration % config.log_every == 0 or last:
                    self.log(sums, count, time.perf_counter() - tick, extra)
                    bar.set_postfix(loss=f"{float(sums['loss']) / count:.4f}")
                    sums, count, tick = {}, 0, time.perf_counter()
                stopped = self.context.any(stop.requested(), self.device)
                if stopped or self.iteration % config.checkpoint_every == 0 or last:
                    self.save()
                if stopped:
                    self.events.write("stop", iteration=self.iteration, reason=stop.reason or "another rank")
                    break
        finally:
            bar.close()
            del batches  # shuts loader workers down
        return stopped

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _prepare_data(config: FinetuneConfig, run_dir: Path, context: DistributedContext, resume: bool
                  ) -> tuple[FinetuneConfig, list[CachedCase], LabelTable, dict]:
    """Cache the cases (rank 0; the others wait and read the manifest), choose the label table (saved in the run
    folder), and record the preprocessing; on resume everything is read back."""
    prepare = PrepareConfig(target_spacing=config.spacing)
    if resume:
        cases = open_prepared(config.cache)
        table = read_label_table(run_dir / LABELS_NAME)
    else:
        cases_found, table_file = find_cases(config.data)
        cache = Path(config.cache) if config.cache else run_dir / CACHE_NAME
        config = replace(config, cache=str(cache))
        if context.is_main:
            prepare_cases(cases_found, cache, prepare, config.modality)
        context.barrier()
        cases = open_prepared(cache)
        present = {int(v) for c in cases for v in c.values}
        if not present:
            raise ValueError(f"{config.data}: every label map is empty (no value > 0)")
        table = choose_label_table(config, table_file, present)
        if context.is_main:
            write_label_table(table, run_dir / LABELS_NAME)
    modalities = {c.modality for c in cases}
    preprocessing = {**prepare.preprocessing(), "modality": modalities.pop() if len(modalities) == 1 else "auto"}
    return config, cases, table, preprocessing


def run_finetune(config: FinetuneConfig, *, resume: bool = False, on_event: Optional[Listener] = None
                 ) -> FinetuneResult:
    """Run (or resume) fine-tuning as configured; ``config.out`` is the run folder.

    Works in one process or under ``torchrun`` (every rank calls this). ``on_event`` receives each event
    (rank 0). Raises ValueError (bad data: geometry mismatch, non-integer or 2D labels, all naming the case;
    wrong checkpoint or widths), TrainingError (out of memory, unwritable folder) after writing an ``error``
    event where possible.
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
        config, cases, table, preprocessing = _prepare_data(config, run_dir, context, resume)
        train_cases, val_cases = split_cases(cases, config.val_fraction, config.seed)
        notes = []
        if val_cases is train_cases:
            notes.append(f"{'a single labelled case' if len(cases) == 1 else 'no held-out case'}: validation "
                         "reuses the training case(s), so its Dice is optimistic")
        trainer = FinetuneTrainer(config, run_dir, table, train_cases, val_cases, preprocessing, context, device,
                                  precision, events, resume_from)
        config = replace(config, channels=tuple(trainer.model.channels))
        trainer.config = config
        if context.is_main:
            save_config(config, run_dir)
        events.write("start", iteration=trainer.iteration, iterations=config.iterations,
                     resumed_from=str(resume_from) if resume_from else None, device=str(device),
                     precision=precision.name, world_size=context.world_size, cache=config.cache,
                     config=config.to_dict(), mode=config.mode, train_cases=[c.name for c in train_cases],
                     val_cases=[c.name for c in val_cases], labels=table, warnings=notes)
        with StopRequest(run_dir) as stop:
            stopped = trainer.train(stop) if trainer.iteration < config.iterations else False
        last = latest_checkpoint(run_dir) if context.is_main else checkpoint_path(run_dir, trainer.iteration)
        best = run_dir / BEST_NAME if (run_dir / BEST_NAME).is_file() else None
        events.write("end", iteration=trainer.iteration, checkpoint=str(last) if last else None, stopped=stopped,
                     best=str(best) if best else None, best_dice=trainer.best_dice,
                     elapsed_s=round(time.perf_counter() - started, 3))
        context.barrier()
        return FinetuneResult(run_dir, trainer.iteration, stopped, last, best, trainer.best_dice, trainer.model)
    except BaseException as exc:
        error: BaseException = exc
        if is_out_of_memory(exc):
            error = TrainingError(
                f"out of memory on {device} with patch {'x'.join(map(str, config.patch))}, batch {config.batch}: "
                "lower --patch, --batch or --channels" + (" or use --precision bf16/fp16" if device.type == "cuda"
                                                          and precision.name == "fp32" else ""))
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
