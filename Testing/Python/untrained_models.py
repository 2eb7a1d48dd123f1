"""Small files the tests share: an untrained segmentation model of given widths and label table, and the check that
a killed pre-training left only loadable checkpoints and resumes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from gvsl.checkpoints import load_checkpoint
from gvsl.cli import main
from gvsl.segment import SegmentationInfo, SegmentationNet, segmentation_payload
from gvsl.train.state import list_checkpoints


def write_untrained_segmentation_model(path: Path, widths: Sequence[int], table: dict, spacing_mm: float) -> Path:
    """A ``gvsl segment`` model file: random weights (seed 0), ``table``'s labels plus background, MR preprocessing
    at ``spacing_mm``, 32^3 windows."""
    torch.manual_seed(0)
    classes = len(table["labels"]) + 1
    info = SegmentationInfo(tuple(widths), classes, table, {
        "target_spacing": [spacing_mm] * 3, "ct_window": [-1024.0, 1024.0], "mr_percentiles": [0.5, 99.5],
        "modality": "MR"}, (32, 32, 32), "finetune", 1)
    torch.save(segmentation_payload(SegmentationNet(classes, tuple(widths)), info), path)
    return path


def assert_killed_pretraining_resumes(run_dir: Path) -> None:
    """Every checkpoint in ``run_dir`` loads as ours, and the run resumes from the last for one more iteration."""
    checkpoints = list_checkpoints(run_dir)
    assert checkpoints
    for _, path in checkpoints:
        assert load_checkpoint(path)["format"] == "gvsl"
    last = checkpoints[-1][0]
    assert main(["pretrain", "--resume", str(run_dir), "--iterations", str(last + 1)]) == 0
    assert list_checkpoints(run_dir)[-1][0] == last + 1
