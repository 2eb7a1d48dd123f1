"""``gvsl finetune`` and ``gvsl segment`` command lines, the fine-tuning curves split for their two charts, and a
comparison's curves and results (``gvsl finetune --compare``).

A fine-tuning run folder is followed like a pre-training one (``GVSLSharedLib.runs.RunFolder``): its iteration
events hold the losses (``loss``, ``dice_loss``, ``ce``) and, at validation iterations, ``val_dice`` (mean over
the labels) and ``val_dice_per_class`` (label name → Dice), which ``RunProgress`` folds into the curves
``val_dice`` and ``val_dice_per_class/NAME``; a comparison's, per arm-run, into ``RunProgress.arm_curves``.
"""
from __future__ import annotations

import os
from typing import Optional

from GVSLSharedLib.runs import RunProgress, gvsl_command

MODES = ("finetune", "linear", "scratch", "random-linear")  # gvsl.finetune.config.MODES
AUTO_MODE = "auto"  # no --mode: gvsl finetune's default, finetune or, with unlabelled scans, COLLECTION_MODE
PRETRAINED_MODES = ("finetune", "linear")  # gvsl.finetune.config.PRETRAINED_MODES: the modes that take --init
COLLECTION_MODE = "scratch"  # gvsl.finetune.config.COLLECTION_MODE
COMPARED_MODE = "scratch"  # what the module's comparison checkbox adds (--compare scratch)
COLLECTION_ARMS = ("matching", "collection")  # and with an unlabelled collection (gvsl.commands.finetune.EXTRA_ARMS)
MEAN_DICE_CURVE = "val_dice"
CLASS_DICE_PREFIX = "val_dice_per_class/"
MEAN_DICE_NAME = "Dice (mean)"  # the mean validation Dice curve as ``split_curves`` names it


def effective_mode(mode: str, unlabelled: Optional[os.PathLike]) -> str:
    """What ``gvsl finetune`` trains for the module's ``mode``: ``AUTO_MODE`` is "finetune", or
    ``COLLECTION_MODE`` with an unlabelled folder (the checkpoint then only matches the scans)."""
    if mode not in (AUTO_MODE, *MODES):
        raise ValueError(f"mode must be one of {', '.join((AUTO_MODE, *MODES))}, got {mode!r}")
    if mode != AUTO_MODE:
        return mode
    return COLLECTION_MODE if unlabelled else "finetune"


def finetune_command(data: os.PathLike, init: os.PathLike, run_dir: os.PathLike, *, mode: str, iterations: int,
                     patch: int, batch: int, lr: float, val_every: int, precision: str, device: str,
                     compare_with_scratch: bool = False, unlabelled: Optional[os.PathLike] = None) -> list[str]:
    """``gvsl finetune DATA --init CHECKPOINT --out RUN_DIR ...`` for a new run (no ``--mode`` for ``AUTO_MODE``;
    ``init`` is the network's start in the pre-trained modes and, with ``unlabelled``, the network that matches the
    scans in every mode). ``unlabelled``: a folder of unlabelled scans, each labelled case matched onto each of them
    and the network trained on the propagated labels too (``--unlabelled``). ``compare_with_scratch`` adds
    ``--compare scratch`` (the same network also trained from scratch on the same cases, crops and budget; RUN_DIR
    then holds a comparison; left out when the run itself trains from scratch), and with ``unlabelled`` also
    ``matching`` and ``collection`` (``COLLECTION_ARMS``: the labelled cases carried by matching alone, and the run
    trained with the collection's labels; the run's own arm trains on the labelled cases alone)."""
    trained = effective_mode(mode, unlabelled)
    if compare_with_scratch and trained == COMPARED_MODE and not unlabelled:
        raise ValueError(f"the {trained} mode cannot be compared with training from scratch: choose another mode")
    args = ["finetune", str(data), "--out", str(run_dir), *(["--mode", mode] if mode != AUTO_MODE else []),
            "--iterations", str(iterations), "--patch", str(patch), "--batch", str(batch), "--lr", repr(float(lr)),
            "--val-every", str(val_every), "--precision", precision, "--device", device, "--no-progress"]
    arms = [*([COMPARED_MODE] if trained != COMPARED_MODE else []), *(COLLECTION_ARMS if unlabelled else ())]
    takes_init = init is not None and (trained in PRETRAINED_MODES or unlabelled)
    return gvsl_command(*args, *(["--init", str(init)] if takes_init else []),
                        *(["--unlabelled", str(unlabelled)] if unlabelled else []),
                        *(["--compare", ",".join(arms)] if compare_with_scratch else []))


def segment_command(image: os.PathLike, model: os.PathLike, out: os.PathLike, device: str = "auto",
                    dicom_seg: Optional[os.PathLike] = None) -> list[str]:
    """``gvsl segment IMAGE --model RUN_OR_FILE --out LABELS``: the label map and ``LABELS``'s label table; with
    ``dicom_seg`` (IMAGE a DICOM series folder) also ``--dicom-seg SEG``, a DICOM SEG that references the series."""
    return gvsl_command("segment", str(image), "--model", str(model), "--out", str(out), "--device", device,
                        *(["--dicom-seg", str(dicom_seg)] if dicom_seg is not None else []))


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


def comparison_curves(progress: RunProgress) -> dict[str, list[tuple[int, float]]]:
    """A comparison's validation Dice curves, one per arm-run ("<arm>-seed<k>" → [(iteration, mean Dice)]), in the
    order they run."""
    return {run: progress.arm_curves[run][MEAN_DICE_CURVE] for run in progress.arm_runs
            if MEAN_DICE_CURVE in progress.arm_curves.get(run, {})}


def comparison_text(progress: RunProgress) -> str:
    """What a comparison found so far, a line each: every scored arm-run's held-out mean Dice while it runs; at the
    end each arm's held-out mean Dice over seeds (± their standard deviation) and the verdicts. Empty for an ordinary
    run."""
    held_out = progress.outcome.get("held_out_dice")
    if not held_out:
        return "\n".join(f"{run}: held-out Dice {record['test_mean_dice']:.3f}"
                         for run, record in progress.arm_results.items() if record.get("test_mean_dice") is not None)
    lines = []
    for arm, stats in held_out.items():
        if stats.get("mean") is not None:
            sd = f" ± {stats['sd']:.3f}" if stats.get("sd") is not None else ""
            lines.append(f"{arm}: held-out Dice {stats['mean']:.3f}{sd} ({stats['n']} seed{'s' * (stats['n'] > 1)})")
    lines += [f"{arm}: {verdict}" for arm, verdict in progress.outcome.get("verdicts", {}).items()]
    return "\n".join(lines)
