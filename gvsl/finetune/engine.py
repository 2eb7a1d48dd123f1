"""The fine-tuning run: cases and cache, label table, model, step and validation; its lifecycle is
``gvsl.train.run``'s.

Run folder: ``config.json``, ``labels.json`` (label table), ``split.json`` (the training and validation case names,
kept on resume), ``cache/`` (unless ``--cache``), ``checkpoints/`` (``iter_NNNNNN.pt``, the last K, resumable),
``best.pt`` (highest mean validation Dice), ``events.jsonl``, ``tensorboard/``. Checkpoints are ``gvsl.segment.model``
payloads (``"format": "gvsl-seg"``).

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

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.utils.data import DataLoader

from gvsl.atomic_files import write_text_atomically
from gvsl.checkpoints import save_checkpoint
from gvsl.data.preprocess import PrepareConfig
from gvsl.finetune.augment import augment_patches
from gvsl.finetune.cache import CachedCase, open_prepared, prepare_cases
from gvsl.finetune.collection import (
    COLLECTION_DIR,
    CollectionMatcher,
    NetworkRegistration,
    default_match_workers,
    find_unlabelled_scans,
)
from gvsl.finetune.config import COLLECTION_MODE, FROZEN_BACKBONE_MODES, FinetuneConfig
from gvsl.finetune.data import Case, find_split_cases
from gvsl.finetune.fusion import IGNORE_VALUE
from gvsl.finetune.model import build_segmentation_net
from gvsl.finetune.sampling import IGNORED_CLASS, PatchBatches
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
from gvsl.train.device import Precision, use_channels_last, use_fast_kernels
from gvsl.train.distributed import DistributedContext
from gvsl.train.events import EventLog, Listener
from gvsl.train.finite_update import FiniteUpdate
from gvsl.train.panels import slice_panel
from gvsl.train.run import CACHE_NAME, Trainer, run_lifecycle
from gvsl.train.state import derive_seed, rng_state

LABELS_NAME = "labels.json"
SPLIT_NAME = "split.json"  # {"train": [case names], "val": [case names]}


@dataclass
class FinetuneResult:
    """How a run ended: last ``iteration``, whether a stop ended it, the last and best checkpoints, best Dice, and
    the names of the validation cases."""

    run_dir: Path
    iteration: int
    stopped: bool
    checkpoint: Optional[Path]
    best: Optional[Path]
    best_dice: Optional[float]
    model: SegmentationNet
    val_cases: list[str]


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


def cases_named(cases: list[CachedCase], names: Sequence[str]) -> list[CachedCase]:
    """The cases called ``names``, in the cache's order; ValueError naming those the cache lacks."""
    missing = sorted(set(names) - {c.name for c in cases})
    if missing:
        raise ValueError(f"the cache holds no case named {', '.join(missing)}")
    return [c for c in cases if c.name in set(names)]


def learning_rate(config: FinetuneConfig, iteration: int) -> float:
    """The learning rate of the update after ``iteration`` updates (a pure function: resume needs no state)."""
    if config.schedule == "constant":
        return config.lr
    return config.lr * (1.0 - iteration / config.iterations) ** 0.9


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, dice_loss: DiceLoss) -> dict[str, torch.Tensor]:
    """``dice_loss`` (soft Dice of the softmax against the one-hot label, MONAI's ``DiceLoss()``) and cross-entropy
    of logits (N, C, D, H, W) float against label (N, 1, D, H, W) class indices; voxels of class ``IGNORED_CLASS``
    (pseudo-labels the carried maps disagree on) count in neither term (a batch of such voxels only: 0, not NaN)."""
    counted = (label >= 0).to(logits.dtype)
    one_hot = F.one_hot(label[:, 0].clamp_min(0), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    ce = F.cross_entropy(logits, label[:, 0], ignore_index=IGNORED_CLASS, reduction="sum")
    return {"dice_loss": dice_loss(logits.softmax(dim=1) * counted, one_hot * counted),
            "ce": ce / counted.sum().clamp_min(1.0)}


class FinetuneTrainer(Trainer):
    """One process's part of a fine-tuning run (rank 0 writes files and validates)."""

    CHECKPOINT_FIELDS = {"best": False}  # ``best.pt`` has its own ``checkpoint`` event, with ``best`` true

    def __init__(self, config: FinetuneConfig, run_dir: Path, table: LabelTable, train_cases: list[CachedCase],
                 val_cases: list[CachedCase], preprocessing: dict, context: DistributedContext,
                 device: torch.device, precision: Precision, events: EventLog, payload: Optional[dict],
                 collection: Sequence[CachedCase] = ()):
        self.table, self.train_cases, self.val_cases, self.preprocessing = table, train_cases, val_cases, preprocessing
        self.collection = list(collection)
        self.values = label_values(table)
        if payload:
            model = SegmentationNet(len(self.values) + 1, payload["channels"])
            model.load_state_dict(payload["model"])
            model.unet.requires_grad_(config.mode not in FROZEN_BACKBONE_MODES)
        else:
            model = build_segmentation_net(config.mode, len(self.values) + 1, config.seed, config.init, config.channels)
        use_fast_kernels(device)  # cuDNN autotuning on CUDA: training patches and validation windows have one size
        channels_last = use_channels_last(None, device, model.channels, precision)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        model.to(device, memory_format=self.memory_format)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
        super().__init__(config, run_dir, context, device, precision, events, model, optimizer, payload)
        self.update = FiniteUpdate(model, self.optimizer, self.scaler)
        self.best_dice = payload.get("best_dice") if payload else None
        self.dice_loss = DiceLoss()
        groups = [train_cases, self.collection]  # a crop from each as often: one labelled case is half the crops
        self.patch_batches = PatchBatches([c for group in groups for c in group], self.values, config.patch,
                                          config.batch, config.foreground, derive_seed(config.seed, "data"),
                                          context.rank, group_sizes=[len(group) for group in groups])
        self.val_windows = None
        if config.val_windows and context.is_main:
            self.val_windows = choose_validation_windows(val_cases, self.values, config.patch, config.val_windows,
                                                         config.foreground, derive_seed(config.seed, "validation"))

    @classmethod
    def prepare(cls, config: FinetuneConfig, run_dir: Path, context: DistributedContext, device: torch.device,
                precision: Precision, events: EventLog, payload: Optional[dict]) -> FinetuneTrainer:
        """Cache the cases, choose the label table and split the cases (``_prepare_data``), build the trainer; its
        ``config`` records the cache and the network's widths."""
        config, train_cases, val_cases, collection, table, preprocessing = _prepare_data(
            config, run_dir, context, payload is not None, events)
        trainer = cls(config, run_dir, table, train_cases, val_cases, preprocessing, context, device, precision,
                      events, payload, collection)
        trainer.config = replace(config, channels=tuple(trainer.model.channels))
        return trainer

    def info(self) -> SegmentationInfo:
        return SegmentationInfo(self.model.channels, self.model.n_classes, self.table, self.preprocessing,
                                self.config.patch, self.config.mode, self.iteration)

    def start_fields(self) -> dict:
        """``mode``, the case names, the label table, and notes (validation reusing the training cases)."""
        notes = []
        if [c.name for c in self.val_cases] == [c.name for c in self.train_cases]:
            notes.append(f"{'a single labelled case' if len(self.train_cases) == 1 else 'no held-out case'}: "
                         "validation reuses the training case(s), so its Dice is optimistic")
        if self.config.unlabelled and self.config.init and self.config.mode == COLLECTION_MODE:
            notes.append(f"--init {self.config.init} matches the unlabelled scans; the segmentation network starts "
                         "from random weights (the better start measured; --mode finetune starts it from the "
                         "checkpoint)")
        return {"mode": self.config.mode, "train_cases": [c.name for c in self.train_cases],
                "collection_cases": [c.name for c in self.collection],
                "val_cases": [c.name for c in self.val_cases], "labels": self.table, "warnings": notes}

    def best_checkpoint(self) -> Optional[Path]:
        """``RUN_DIR/best.pt`` once a validation has saved it."""
        best = self.run_dir / BEST_NAME
        return best if best.is_file() else None

    def end_fields(self) -> dict:
        best = self.best_checkpoint()
        return {"best": str(best) if best else None, "best_dice": self.best_dice}

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``patch_batches`` items ``iteration``, ..., ``iterations - 1`` through a data loader."""
        loader = DataLoader(self.patch_batches, batch_size=None, sampler=range(self.iteration, self.config.iterations),
                            num_workers=self.config.workers, pin_memory=self.device.type == "cuda")
        return iter(loader)

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
        terms = segmentation_loss(logits.float(), label, self.dice_loss)
        loss = terms["dice_loss"] + terms["ce"]
        self.update(loss)
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def checkpoint_payload(self) -> dict:
        return segmentation_payload(self.model, self.info(), optimizer=self.optimizer.state_dict(),
                                    scaler=self.scaler.state_dict(), rng=rng_state(), config=self.config.to_dict(),
                                    best_dice=self.best_dice, world_size=self.context.world_size)

    def validate_if_due(self) -> dict:
        """Every ``val_every`` iterations and at the last: ``validate`` on rank 0 (the others wait)."""
        if self.iteration % self.config.val_every and self.iteration != self.config.iterations:
            return {}
        fields = self.validate() if self.context.is_main else {}
        self.context.barrier()
        return fields

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


def collection_cases(config: FinetuneConfig, run_dir: Path, labelled: list[Case], events: EventLog) -> list[Case]:
    """The cases ``--unlabelled`` adds (``gvsl.finetune.collection``: the pseudo-labelled scans),
    matched into ``RUN_DIR/collection`` with a ``pseudo_labels`` event after each scan; scans left out become
    ``collection_notes`` (printed by the command)."""
    scans, notes = find_unlabelled_scans(config.unlabelled, [case.image for case in labelled])
    events.write("pseudo_labels", done=0, total=len(scans), scan=None)
    matcher = CollectionMatcher(run_dir / COLLECTION_DIR,
                                NetworkRegistration(config.match_checkpoint or config.init, config.device),
                                config.min_agreement)
    workers = config.match_workers or default_match_workers(config.device)
    found = matcher.run(labelled, scans, notes, lambda done, total, scan: events.write(
        "pseudo_labels", done=done, total=total, scan=scan), workers=workers)
    if found.notes:
        events.write("collection_notes", notes=found.notes)
    return found.pseudo


def _prepare_data(config: FinetuneConfig, run_dir: Path, context: DistributedContext, resume: bool,
                  events: EventLog) -> tuple[FinetuneConfig, list[CachedCase], list[CachedCase], list[CachedCase],
                                             LabelTable, dict]:
    """Cache the cases of ``data`` and ``val_data`` (and, with ``unlabelled``, the collection's: ``collection_cases``)
    in one cache (rank 0; the others wait and read the manifest), choose the label table and split the labelled cases
    into training and validation (``val_data``'s, else ``split_cases``'s), all saved in the run folder; on resume
    everything is read back. Returns the config (with its cache), the training, validation and collection cases, the
    label table and the preprocessing."""
    prepare = PrepareConfig(target_spacing=config.spacing)
    if resume:
        cases = open_prepared(config.cache)
        table = read_label_table(run_dir / LABELS_NAME)
        split = json.loads((run_dir / SPLIT_NAME).read_text()) if (run_dir / SPLIT_NAME).is_file() else None
        collection = cases_named(cases, split.get("collection", [])) if split else []
    else:
        found, val_found, table_file = find_split_cases(config.data, config.val_data)
        cache = Path(config.cache) if config.cache else run_dir / CACHE_NAME
        config = replace(config, cache=str(cache))
        if context.is_main:
            extra = collection_cases(config, run_dir, found, events) if config.unlabelled else []
            prepare_cases(found + val_found + extra, cache, prepare, config.modality)
        context.barrier()
        labelled_names = {c.name for c in found + val_found}
        everything = open_prepared(cache)
        cases = [c for c in everything if c.name in labelled_names]
        collection = [c for c in everything if c.name not in labelled_names]
        present = {int(v) for c in everything for v in c.values} - {IGNORE_VALUE}
        if not present:
            raise ValueError(f"{config.data}: every label map is empty (no value > 0)")
        table = choose_label_table(config, table_file, present)
        split = {"train": [c.name for c in found], "val": [c.name for c in val_found]} if val_found else None
    if split is None:
        train_cases, val_cases = split_cases(cases, config.val_fraction, config.seed)
    else:
        train_cases, val_cases = cases_named(cases, split["train"]), cases_named(cases, split["val"])
    if context.is_main and not resume:
        write_label_table(table, run_dir / LABELS_NAME)
        write_text_atomically(run_dir / SPLIT_NAME, json.dumps(
            {"train": [c.name for c in train_cases], "val": [c.name for c in val_cases],
             "collection": [c.name for c in collection]}, indent=1) + "\n")
    modalities = {c.modality for c in cases}
    preprocessing = {**prepare.preprocessing(), "modality": modalities.pop() if len(modalities) == 1 else "auto"}
    return config, train_cases, val_cases, collection, table, preprocessing


def run_finetune(config: FinetuneConfig, *, resume: bool = False, on_event: Optional[Listener] = None,
                 stop_folders: Sequence[os.PathLike] = ()) -> FinetuneResult:
    """Run (or resume) fine-tuning as configured; ``config.out`` is the run folder.

    Works in one process or under ``torchrun`` (every rank calls this). ``on_event`` receives each event
    (rank 0). A ``STOP`` file in any of ``stop_folders`` stops the run as one in its own folder does. Raises
    ValueError (bad data: geometry mismatch, non-integer or 2D labels, all naming the case; wrong checkpoint or
    widths), TrainingError (out of memory, unwritable folder) after writing an ``error``
    event where possible.
    """
    trainer, stopped, last = run_lifecycle(FinetuneTrainer, config, resume=resume, on_event=on_event,
                                           stop_folders=stop_folders)
    return FinetuneResult(trainer.run_dir, trainer.iteration, stopped, last, trainer.best_checkpoint(),
                          trainer.best_dice, trainer.model, [c.name for c in trainer.val_cases])
