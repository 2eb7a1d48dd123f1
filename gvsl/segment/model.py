"""The segmentation network (GVSL backbone + head) and its checkpoint payload.

Payload (``weights_only``-loadable; saved atomically with ``gvsl.checkpoints.save_checkpoint``)::

    {"format": "gvsl-seg", "version": 1,
     "model": state dict ("unet.*" = the GVSL backbone, "head.*" = the Conv3d head),
     "channels": [9 ints], "n_classes": int (background + labels),
     "label_table": {"labels": [{"value", "name", "color"}, ...]} (class c >= 1 is label_table["labels"][c - 1]),
     "preprocessing": {"target_spacing", "ct_window", "mr_percentiles", "modality"},
     "patch": [D, H, W] (training crop; the default inference window), "mode": "finetune" | "linear" | "scratch"
     | "random-linear",
     "iteration": int, ...}

plus, in training checkpoints, ``optimizer``, ``scaler``, ``rng``, ``config``, ``best_dice``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from gvsl.checkpoints import FORMAT as PRETRAINING_FORMAT
from gvsl.checkpoints import SEGMENTATION_FORMAT, checkpoint_payload, load_checkpoint, model_state_dict_matches
from gvsl.labels import LabelTable, check_label_table, label_values
from gvsl.networks.backbone import DEFAULT_CHANNELS, UNetBackbone

VERSION = 1  # of the SEGMENTATION_FORMAT payload
BEST_NAME = "best.pt"


class SegmentationNet(nn.Module):
    """GVSL U-Net backbone + segmentation head (Conv3d k3 on the local features, as in the paper).

    ``forward(x)``: x (N, 1, D, H, W) float in [0, 1], any size >= 16 per axis
    -> logits (N, n_classes, D, H, W); class 0 is background.
    """

    def __init__(self, n_classes: int, channels: Sequence[int] = DEFAULT_CHANNELS):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a segmentation model needs background and at least one label, got {n_classes} classes")
        self.unet = UNetBackbone(1, channels)
        self.head = nn.Conv3d(self.unet.channels[8], n_classes, kernel_size=3, padding=1)
        self.n_classes = n_classes

    @property
    def channels(self) -> tuple[int, ...]:
        return self.unet.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x)[1])


@dataclass(frozen=True)
class SegmentationInfo:
    """What a segmentation checkpoint holds besides the weights (see the module doc)."""

    channels: tuple[int, ...]
    n_classes: int
    label_table: LabelTable
    preprocessing: dict[str, Any]
    patch: tuple[int, int, int]
    mode: str
    iteration: int

    @property
    def label_values(self) -> list[int]:
        """Label map value of each class index 1..n_classes-1."""
        return label_values(self.label_table)


def segmentation_payload(model: SegmentationNet, info: SegmentationInfo, **extra: Any) -> dict[str, Any]:
    """The checkpoint payload of ``model`` (add ``optimizer``, ``scaler``, ``rng``, ``config`` via ``extra``)."""
    return checkpoint_payload(SEGMENTATION_FORMAT, VERSION, model, info.iteration, n_classes=model.n_classes,
                              label_table=info.label_table, preprocessing=info.preprocessing, patch=list(info.patch),
                              mode=info.mode, **extra)


def describe_segmentation(payload: dict[str, Any], source: str = "checkpoint") -> SegmentationInfo:
    """The ``SegmentationInfo`` of a payload; ValueError for pre-training or foreign checkpoints."""
    kind = payload.get("format")
    if kind != SEGMENTATION_FORMAT:
        pretraining = kind == PRETRAINING_FORMAT or "unet.inc.double_conv.0.weight" in payload
        what = "a GVSL pre-training checkpoint" if pretraining else "not a GVSL segmentation model"
        raise ValueError(f"{source} is {what}; segmentation needs a fine-tuned model: run "
                         f"`gvsl finetune DATA --init {source} --out RUN_DIR`, then "
                         "`gvsl segment IMAGE --model RUN_DIR`")
    if int(payload.get("version", 0)) > VERSION:
        raise ValueError(f"{source} is a segmentation model of version {payload['version']}; this gvsl reads "
                         f"version {VERSION} (update gvsl)")
    table = check_label_table(payload["label_table"], f"{source} label table")
    info = SegmentationInfo(tuple(int(c) for c in payload["channels"]), int(payload["n_classes"]), table,
                            dict(payload["preprocessing"]), tuple(int(p) for p in payload["patch"]),
                            str(payload.get("mode", "finetune")), int(payload.get("iteration", 0)))
    if info.n_classes != len(table["labels"]) + 1:
        raise ValueError(f"{source}: {info.n_classes} classes but {len(table['labels'])} labels in its table")
    return info


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A checkpoint file, or a fine-tuning run folder (its ``best.pt``, else its latest checkpoint)."""
    from gvsl.train.state import latest_checkpoint

    path = Path(model)
    if path.is_dir():
        found = path / BEST_NAME if (path / BEST_NAME).is_file() else latest_checkpoint(path)
        if found is None:
            raise ValueError(f"{path} is a folder without a segmentation model ({BEST_NAME} or checkpoints/)")
        return found
    return path


def load_segmentation_model(model: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu"
                            ) -> tuple[SegmentationNet, SegmentationInfo]:
    """Build the network a segmentation checkpoint describes and load its weights (``weights_only``).

    ``model``: a file, a fine-tuning run folder, or a loaded payload. Raises
    ValueError for a pre-training checkpoint and for weights that do not fit
    the recorded widths (naming the keys).
    """
    source = "payload" if isinstance(model, dict) else str(resolve_model_path(model))
    payload = model if isinstance(model, dict) else load_checkpoint(source, map_location="cpu")
    info = describe_segmentation(payload, source)
    net = SegmentationNet(info.n_classes, info.channels)
    try:
        model_state_dict_matches(net, payload["model"])
    except ValueError as exc:
        raise ValueError(f"{source}: its weights do not fit its recorded widths {list(info.channels)} and "
                         f"{info.n_classes} classes (damaged or edited file?): {exc}") from exc
    net.load_state_dict(payload["model"], strict=True)
    return net.to(device).eval(), info
