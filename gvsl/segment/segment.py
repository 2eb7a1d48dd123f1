"""Segment a volume with a fine-tuned model: preprocessing as in training, sliding windows, and a label map in the
input's exact geometry (size, spacing, origin, direction)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.data.preprocess import PrepareConfig, preprocess_image
from gvsl.io.geometry import grid_differences
from gvsl.labels import LabelTable, sidecar_path, write_label_table
from gvsl.segment.collection_matches import fuse_with_label_maps
from gvsl.segment.inference import predict_probabilities
from gvsl.segment.model import SegmentationInfo, SegmentationNet, load_segmentation_model
from gvsl.train.device import forward_channels_last, select_device, select_inference_precision


def prepare_config(preprocessing: dict[str, Any]) -> PrepareConfig:
    """The ``PrepareConfig`` a model was trained with (from its checkpoint's ``preprocessing``)."""
    return PrepareConfig(target_spacing=tuple(preprocessing["target_spacing"]),
                         ct_window=tuple(preprocessing["ct_window"]),
                         mr_percentiles=tuple(preprocessing["mr_percentiles"]))


def to_input_grid(probabilities: np.ndarray, canonical: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """(C, D, H, W) probabilities on ``canonical``'s grid -> (C, k, j, i) float32 probabilities of ``reference``'s.

    Probabilities are resampled linearly (physical space, LPS), which gives smoother boundaries after the arg-max
    than resampling the class map when the input is finer than the model's grid. Outside the model's grid
    (resampled as zeros) the background has probability 1. Where the grids coincide nothing is resampled.
    """
    if not grid_differences(canonical, reference):
        return probabilities.astype(np.float32, copy=False)
    vector = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(probabilities, 0, -1)), isVector=True)
    vector.CopyInformation(canonical)
    resampled = sitk.Resample(vector, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    out = np.moveaxis(sitk.GetArrayFromImage(resampled), -1, 0)
    out[0][out.sum(axis=0) < 0.5] = 1.0
    return out


def keep_largest_components(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class 1..n_classes-1, keep only its largest 26-connected component (the rest becomes background)."""
    out = classes.copy()
    for c in range(1, n_classes):
        present = classes == c
        if not present.any():
            continue
        mask = sitk.GetImageFromArray(present.astype(np.uint8))
        components = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
        out[present & (sitk.GetArrayViewFromImage(components) != 1)] = 0
    return out


def segment_with(model: SegmentationNet, info: SegmentationInfo, image: sitk.Image, *, overlap: float = 0.5,
                 sw_batch_size: int = 2, largest_component: bool = False,
                 device: str | torch.device = "cpu", precision: str = "auto",
                 window: Optional[tuple[int, int, int]] = None, label_maps: Sequence[np.ndarray] = (),
                 intensity_refinement: bool = True) -> sitk.Image:
    """The label map of ``image`` (3D, physical units, any orientation) by a loaded model on ``device``.

    ``label_maps``: label maps carried onto ``image`` by matching (each [k, j, i] of its grid, label values), fused
    with the model's probabilities (``gvsl.segment.collection_matches.fuse_with_label_maps``);
    ``intensity_refinement``: the voxels near the structures are then refined by ``image``'s own intensities
    (``gvsl.segment.intensity_refinement``).

    Returns a UInt8 (or UInt16 for values > 255) image with exactly
    ``image``'s size, spacing, origin and direction; values are the label
    table's values (0 background). ``window`` defaults to the training patch. The model may be converted to
    the channels-last-3d layout where that is faster.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"{image.GetDimension()}D image: segmentation needs a 3D volume")
    device = torch.device(device)
    modality = info.preprocessing.get("modality", "auto")
    prepared = preprocess_image(image, modality, prepare_config(info.preprocessing))
    volume = torch.from_numpy(sitk.GetArrayFromImage(prepared.image))[None, None].to(device)
    channels_last = forward_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    probabilities = predict_probabilities(model, volume, window or info.patch, overlap=overlap,
                                          sw_batch_size=sw_batch_size,
                                          precision=select_inference_precision(precision, device), device=device,
                                          channels_last=channels_last)
    on_input = to_input_grid(probabilities[0].cpu().numpy(), prepared.image, image)
    intensities = sitk.GetArrayViewFromImage(image) if intensity_refinement else None
    classes = fuse_with_label_maps(on_input, label_maps, info.label_values, intensities=intensities).astype(np.uint8)
    if largest_component:
        classes = keep_largest_components(classes, info.n_classes)
    lookup = np.array([0, *info.label_values])
    dtype = np.uint8 if lookup.max() <= 255 else np.uint16
    label = sitk.GetImageFromArray(lookup.astype(dtype)[classes])
    label.CopyInformation(image)
    return label


def segment_image(image: sitk.Image, model_path: str | os.PathLike, *, overlap: float = 0.5, sw_batch_size: int = 2,
                  largest_component: bool = False, device: str = "cpu",
                  precision: str = "auto", label_maps: Sequence[np.ndarray] = (), intensity_refinement: bool = True
                  ) -> tuple[sitk.Image, LabelTable]:
    """Segment ``image`` with the model in ``model_path`` (a checkpoint file or a fine-tuning run folder).

    ``device``: "cpu", "cuda", "cuda:N", "mps" or "auto"; ``precision``: "auto" (bf16/fp16 autocast on GPUs, bf16
    on CPUs that compute it natively, float32 elsewhere: ``gvsl.train.device.select_inference_precision``), "fp32",
    "bf16", "fp16"; ``label_maps``, ``intensity_refinement``: as ``segment_with``. Returns the label map (the
    input's exact geometry) and the label table ``{"labels": [{"value", "name", "color"}, ...]}``. Raises ValueError
    for a 2D image, a pre-training checkpoint, or weights that do not fit the recorded widths.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"{image.GetDimension()}D image: segmentation needs a 3D volume")
    torch_device = select_device(device)
    model, info = load_segmentation_model(model_path, torch_device)
    label = segment_with(model, info, image, overlap=overlap, sw_batch_size=sw_batch_size,
                         largest_component=largest_component, device=torch_device, precision=precision,
                         label_maps=label_maps, intensity_refinement=intensity_refinement)
    return label, info.label_table


def write_segmentation(label: sitk.Image, table: LabelTable, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the label map (NIfTI, NRRD, MHA by suffix; compressed) and its table next to it (``*.labels.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(label, str(path), useCompression=True)
    return path, write_label_table(table, sidecar_path(path))
