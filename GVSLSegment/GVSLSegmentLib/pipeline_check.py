"""A short, real run of GVSLSegment's work in a scene: sample heads with tissue segmentations → fine-tuning of a
pre-trained checkpoint → segmentation of another head → a segmentation node.

Like ``GVSLSharedLib.pipeline_check`` (whose sample heads, process polling and tiny settings it uses): run by the
module's self-test inside Slicer and by the pytest suite against ``slicer-core``.
"""
from __future__ import annotations

import os
from pathlib import Path

from GVSLSharedLib import label_maps, runs
from GVSLSharedLib.pipeline_check import (
    DEVICE,
    PATCH,
    TINY_RUN,
    CheckFailed,
    Tick,
    check_pretrain_and_match,
    no_op,
    run_to_end,
)
from GVSLSharedLib.samples import load_volume

from . import finetuning, results, training_data


def load_case(scene, volume_path: os.PathLike, labels_path: os.PathLike, name: str) -> training_data.TrainingCase:
    """A volume node and its segmentation (segments named and coloured from the label map's table)."""
    volume = load_volume(scene, volume_path, name)
    labels, table = label_maps.read_label_map(labels_path)
    return training_data.TrainingCase(volume, label_maps.import_label_map(scene, labels, table, volume,
                                                                       name=f"{name} segmentation"))


def finetune(scene, cases, checkpoint: os.PathLike, folder: os.PathLike, tick: Tick = no_op,
             iterations: int = 2) -> Path:
    """Export ``cases`` and run ``gvsl finetune`` from ``checkpoint`` as the module does; returns the run folder."""
    folder = Path(folder)
    training_data.export_training_data(scene, cases, folder / "data")
    run_dir = folder / "run"
    command = finetuning.finetune_command(folder / "data", checkpoint, run_dir, mode="finetune",
                                          iterations=iterations, patch=PATCH, batch=1, lr=1e-3,
                                          val_every=iterations, precision="fp32", device=DEVICE)
    run_to_end(runs.BackgroundProcess(command + [*TINY_RUN, "--no-augment"], run_dir / runs.PROCESS_LOG_NAME),
               "gvsl finetune", tick)
    run = runs.RunFolder(run_dir)
    run.poll()
    if run.progress.state != "finished" or run.progress.iteration != iterations:
        raise CheckFailed(f"gvsl finetune ended as {run.progress.state!r} at iteration {run.progress.iteration}")
    dice = finetuning.split_curves(run.progress.curves)[1]
    if finetuning.MEAN_DICE_NAME not in dice:
        raise CheckFailed(f"gvsl finetune's events have no validation Dice (curves: {sorted(run.progress.curves)})")
    return run_dir


def segment_in_scene(scene, volume_node, model: os.PathLike, folder: os.PathLike, tick: Tick = no_op):
    """``gvsl segment`` on a volume node as the module runs it; returns the imported segmentation node."""
    job = results.start_segmentation(volume_node, model, folder, DEVICE)
    run_to_end(job.process, "gvsl segment", tick)
    return label_maps.import_label_map(scene, *label_maps.read_label_map(job.labels, job.table), volume_node)


def check_finetune_and_segment(scene, folder: os.PathLike, tick: Tick = no_op) -> dict:
    """The whole check: GVSLPretrain's (sample heads, pre-training, a match), then fine-tuning on two labelled heads
    and segmentation of a third. Returns ``cases``, ``run``, ``target`` and ``segmentation``; raises CheckFailed when
    a step or a node is wrong."""
    folder = Path(folder)
    pretrained = check_pretrain_and_match(scene, folder, tick)
    heads = pretrained["heads"]
    cases = [load_case(scene, volume, labels, f"GVSL check case {n + 1}") for n, (volume, labels) in
             enumerate(heads[:2])]
    run_dir = finetune(scene, cases, pretrained["checkpoint"], folder / "finetune", tick)
    target = load_volume(scene, heads[2][0], "GVSL check target head")
    segmentation = segment_in_scene(scene, target, run_dir, folder / "segment", tick)
    expected = [name for name, _ in training_data.segment_names_and_colors(cases[0].segmentation_node)]
    found = [name for name, _ in training_data.segment_names_and_colors(segmentation)]
    if sorted(found) != sorted(expected):
        raise CheckFailed(f"the segmentation has segments {found}, expected {expected}")
    if not segmentation.GetSegmentation().ContainsRepresentation("Closed surface"):
        raise CheckFailed("the segmentation has no closed surface (nothing to show in 3D)")
    return {**pretrained, "cases": cases, "run": run_dir, "target": target, "segmentation": segmentation}
