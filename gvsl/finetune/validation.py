"""Validation during fine-tuning: per-class Dice of the model on held-out cases.

Two measures. The default scores a fixed set of validation windows (``val_windows`` crops of the training patch
size, chosen once per run as training patches are: centred on a labelled voxel with the ``foreground``
probability, else anywhere), so a validation costs ``val_windows / batch`` forward passes whatever the size of the
volumes: on a 1 mm head it is a few training steps' time where whole volumes took tens of steps. Dice pools the
windows (true and false positives and negatives summed over all windows per class), so windows that hold none of a
class still count its false positives. With ``val_windows = 0`` the whole volumes are predicted by sliding windows
(overlap 0.5, as ``gvsl segment``) and Dice is averaged over cases, as MONAI's ``compute_dice``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice

from gvsl.finetune.cache import CachedCase
from gvsl.finetune.sampling import PatchBatches, class_lookup
from gvsl.segment.inference import predict_probabilities
from gvsl.train.device import Precision


@dataclass(frozen=True)
class ValidationWindows:
    """The fixed crops of a run's validation: images (N, 1, d, h, w) float32 in [0, 1], labels (N, d, h, w) int64
    class indices (0 background)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class ValidationResult:
    """Per-class Dice (classes 1..n; None where the truth holds no voxel of the class) and, for panels, the first
    window or case: image (D, H, W) in [0, 1], truth and predicted class indices (D, H, W)."""

    dice: list[Optional[float]]
    image: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray

    @property
    def mean_dice(self) -> Optional[float]:
        known = [d for d in self.dice if d is not None]
        return float(np.mean(known)) if known else None


def choose_validation_windows(cases: list[CachedCase], values: Sequence[int], patch: Sequence[int], count: int,
                              foreground: float, seed: int) -> ValidationWindows:
    """``count`` crops of size ``patch`` (voxels), window k from case k mod len(cases); a pure function of
    ``seed``."""
    sampler = PatchBatches(cases, values, patch, 1, foreground, seed)
    rng = np.random.default_rng(seed)
    images, labels = zip(*(sampler.patch_pair(k % len(cases), rng) for k in range(count)))
    return ValidationWindows(torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)))


@torch.inference_mode()
def window_dice(model: torch.nn.Module, windows: ValidationWindows, n_classes: int, batch: int,
                precision: Precision, device: torch.device, memory_format: torch.memory_format
                ) -> ValidationResult:
    """Dice of ``model`` ((N, 1, d, h, w) -> (N, n_classes, d, h, w) logits) pooled over ``windows``, ``batch``
    windows per forward pass."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, n_classes, dtype=torch.int64)  # true positives, predicted, true voxels per class
    predictions = []
    for first in range(0, len(windows.images), batch):
        images = windows.images[first:first + batch].to(device).contiguous(memory_format=memory_format)
        with precision.autocast(device):
            predicted = model(images).argmax(dim=1).cpu()
        truth = windows.labels[first:first + batch]
        counts[0] += torch.bincount(truth[predicted == truth], minlength=n_classes)
        counts[1] += torch.bincount(predicted.ravel(), minlength=n_classes)
        counts[2] += torch.bincount(truth.ravel(), minlength=n_classes)
        predictions.append(predicted[:1])
    model.train(was_training)
    overlap, predicted_voxels, true_voxels = counts[:, 1:].double()
    dice = [None if t == 0 else float(2 * o / (p + t)) for o, p, t in zip(overlap, predicted_voxels, true_voxels)]
    return ValidationResult(dice, windows.images[0, 0].numpy(), windows.labels[0].numpy(), predictions[0][0].numpy())


@torch.inference_mode()
def volume_dice(model: torch.nn.Module, cases: list[CachedCase], values: Sequence[int], window: Sequence[int],
                batch: int, precision: Precision, device: torch.device, memory_format: torch.memory_format
                ) -> ValidationResult:
    """Dice of sliding-window predictions on the whole volumes of ``cases``, averaged over the cases that hold each
    class; ``values``: label value of class 1, 2, ...; ``window`` (voxels) as ``gvsl segment`` uses it."""
    n_classes = len(values) + 1
    lookup = class_lookup(cases, values)
    was_training = model.training
    model.eval()
    scores, first = [], None
    for case in cases:
        volume = torch.from_numpy(case.image_array())[None, None]
        predicted = predict_probabilities(model, volume, window, overlap=0.5, sw_batch_size=batch,
                                          precision=precision, device=device,
                                          channels_last=memory_format == torch.channels_last_3d).argmax(dim=1)
        truth = torch.from_numpy(lookup[case.label_array()])[None]
        scores.append(compute_dice(F.one_hot(predicted, n_classes).movedim(-1, 1),
                                   F.one_hot(truth, n_classes).movedim(-1, 1), include_background=False,
                                   ignore_empty=True)[0])
        if first is None:
            first = (volume[0, 0].numpy(), truth[0].numpy(), predicted[0].numpy())
    model.train(was_training)
    dice = torch.nanmean(torch.stack(scores), dim=0)
    return ValidationResult([None if torch.isnan(d) else float(d) for d in dice], *first)
