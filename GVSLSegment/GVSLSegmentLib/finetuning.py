"""``gvsl finetune`` and ``gvsl segment`` command lines, and the fine-tuning curves split for their two charts.

A fine-tuning run folder is followed like a pre-training one (``GVSLSharedLib.runs.RunFolder``): its iteration
events hold the losses (``loss``, ``dice_loss``, ``ce``) and, at validation iterations, ``val_dice`` (mean over
the labels) and ``val_dice_per_class`` (label name → Dice), which ``RunProgress`` folds into the curves
``val_dice`` and ``val_dice_per_class/NAME``.
"""
from __future__ import annotations

import os

from GVSLSharedLib.runs import gvsl_command

MODES = ("finetune", "linear", "scratch")  # gvsl.finetune.config.MODES
MEAN_DICE_CURVE = "val_dice"
CLASS_DICE_PREFIX = "val_dice_per_class/"
MEAN_DICE_NAME = "Dice (mean)"  # the mean validation Dice curve as ``split_curves`` names it


def finetune_command(data: os.PathLike, init: os.PathLike, run_dir: os.PathLike, *, mode: str, iterations: int,
                     patch: int, batch: int, lr: float, val_every: int, precision: str, device: str) -> list[str]:
    """``gvsl finetune DATA --init CHECKPOINT --out RUN_DIR ...`` for a new run (``init`` is ignored by the
    ``scratch`` mode, which starts from random weights)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    args = ["finetune", str(data), "--out", str(run_dir), "--mode", mode, "--iterations", str(iterations),
            "--patch", str(patch), "--batch", str(batch), "--lr", repr(float(lr)), "--val-every", str(val_every),
            "--precision", precision, "--device", device, "--no-progress"]
    return gvsl_command(*args, *(["--init", str(init)] if mode != "scratch" else []))


def segment_command(image: os.PathLike, model: os.PathLike, out: os.PathLike, device: str = "auto") -> list[str]:
    """``gvsl segment IMAGE --model RUN_OR_FILE --out LABELS``: the label map and ``LABELS``'s label table."""
    return gvsl_command("segment", str(image), "--model", str(model), "--out", str(out), "--device", device)


def split_curves(curves: dict[str, list[tuple[int, float]]]) -> tuple[dict, dict]:
    """(losses, validation Dice) of a run's curves; the Dice curves are named "Dice (mean)" and "Dice NAME"."""
    losses, dice = {}, {}
    for name, values in curves.items():
        if name == MEAN_DICE_CURVE:
            dice[MEAN_DICE_NAME] = values
        elif name.startswith(CLASS_DICE_PREFIX):
            dice[f"Dice {name[len(CLASS_DICE_PREFIX):]}"] = values
        else:
            losses[name] = values
    return losses, dice
