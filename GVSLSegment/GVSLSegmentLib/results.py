"""``gvsl segment`` on a volume node in the background; its label map becomes a segmentation node through
``GVSLSharedLib.label_maps`` (which both modules use)."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from GVSLSharedLib.label_maps import label_table_path
from GVSLSharedLib.runs import BackgroundProcess
from GVSLSharedLib.volumes import write_volume_node

from .finetuning import segment_command


def start_segmentation(volume_node, model: os.PathLike, folder: os.PathLike, device: str = "auto") -> SimpleNamespace:
    """``gvsl segment`` on a volume node in the background, its input, log and output in ``folder``; returns the job:
    ``process``, ``labels`` (the label map it writes) and ``table`` (that map's label table)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = folder / "input.nrrd", folder / "segmentation.nrrd"
    write_volume_node(volume_node, image, "input volume")
    process = BackgroundProcess(segment_command(image, model, labels, device or "auto"), folder / "segment.log")
    return SimpleNamespace(process=process, labels=labels, table=label_table_path(labels))


