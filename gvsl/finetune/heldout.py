"""Held-out Dice of a fine-tuned model as a user would see it: each held-out case segmented whole by
``gvsl.segment.segment_with`` (preprocessing, sliding windows, label map in the input's geometry) and compared with
its label map, per class.

Counted with NumPy on the input's grid rather than MONAI's ``compute_dice``, which needs one-hot volumes (classes x
voxels of the input's grid).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.finetune.cache import read_case
from gvsl.finetune.data import Case
from gvsl.segment.collection_matches import collection_label_maps
from gvsl.segment.model import SegmentationInfo, SegmentationNet
from gvsl.segment.segment import segment_with


@dataclass(frozen=True)
class HeldOutDice:
    """``dice``: label name -> Dice averaged over the cases whose label map holds the label (None where none does);
    ``per_case``: case name -> label name -> Dice (None where that case lacks the label)."""

    dice: dict[str, Optional[float]]
    per_case: dict[str, dict[str, Optional[float]]]

    @property
    def mean_dice(self) -> Optional[float]:
        """Mean over the labels with a Dice (None if no label has one)."""
        known = [d for d in self.dice.values() if d is not None]
        return float(np.mean(known)) if known else None


def class_dice(predicted: np.ndarray, truth: np.ndarray, values: Sequence[int]) -> list[Optional[float]]:
    """Dice 2|P and T| / (|P| + |T|) of each label value between two label maps of one shape (any integer dtype);
    None for a value the truth does not hold (as MONAI's ``ignore_empty``)."""
    scores = []
    for value in values:
        p, t = predicted == value, truth == value
        true_voxels = int(np.count_nonzero(t))
        scores.append(None if true_voxels == 0 else
                      2.0 * int(np.count_nonzero(p & t)) / (int(np.count_nonzero(p)) + true_voxels))
    return scores


def held_out_dice(model: SegmentationNet, info: SegmentationInfo, cases: Sequence[Case], *,
                  device: str | torch.device = "cpu", precision: str = "auto", sw_batch_size: int = 2,
                  run_dir: Optional[Path] = None) -> HeldOutDice:
    """Segment every case's image with ``model`` (``segment_with``) and score it against the case's label map on the
    image's own grid, as ``gvsl segment --model RUN_DIR`` would: a case whose image is a scan of ``run_dir``'s
    unlabelled collection is fused with the run's matches onto it. Label values the model does not know count as
    background. Raises ValueError naming the case for an unreadable file, a 2D image or a label map off the image's
    grid."""
    names = [e["name"] for e in info.label_table["labels"]]
    per_case = {}
    for case in cases:
        try:
            image, truth = read_case(case)
        except RuntimeError as exc:  # SimpleITK read errors
            raise ValueError(f"case {case.name}: cannot read {case.image} or {case.label}: {exc}") from exc
        label_maps = collection_label_maps(run_dir, image)[1] if run_dir is not None else []
        predicted = segment_with(model, info, image, sw_batch_size=sw_batch_size, device=device, precision=precision,
                                 label_maps=label_maps)
        scores = class_dice(sitk.GetArrayViewFromImage(predicted), sitk.GetArrayViewFromImage(truth),
                            info.label_values)
        per_case[case.name] = dict(zip(names, scores))
    return HeldOutDice(mean_per_label(per_case, names), per_case)


def mean_per_label(per_case: dict[str, dict[str, Optional[float]]], names: Sequence[str]
                   ) -> dict[str, Optional[float]]:
    """Label name -> Dice averaged over the cases that hold the label (None where none does)."""
    dice = {}
    for name in names:
        known = [scores[name] for scores in per_case.values() if scores[name] is not None]
        dice[name] = float(np.mean(known)) if known else None
    return dice
