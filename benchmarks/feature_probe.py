"""What do a backbone's frozen features hold? Per layer, on real brains: the effective rank of the features and a
closed-form linear probe of the subcortical structures from one donor to another.

For each checkpoint (or ``random``: the random backbone every scratch run starts from, seed 0), the backbone runs on
whole preprocessed donor images (``benchmarks/transfer.py data``: T1-like images at 2 mm) and every layer's output is
upsampled (trilinear) to the image grid. Per layer:

- **effective rank**: (Σλ)² / Σλ² of the eigenvalues λ of the channels' covariance over the voxels of the training
  donor: 1 when every channel carries the same signal (a collapsed representation), up to the layer's width;
- **probe Dice**: ridge regression (closed form; standardised features, λ = 0.01 per voxel) from the training donor's
  features to one-hot labels (its structures' voxels and 20,000 background voxels), applied to every voxel of the test
  donor (arg-max), mean Dice over the structures present in the test donor. It asks what a linear read-out of one
  voxel's features can tell, no training run involved; the fine-tuning arms ``linear``/``random-linear`` ask the same
  of a trained 3³ head.

    python benchmarks/feature_probe.py DONORS_DIR random RUN/checkpoints/iter_003500.pt [--train 12876 --test 15496]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from gvsl.data.preprocess import PrepareConfig
from gvsl.finetune.cache import preprocess_case
from gvsl.finetune.data import Case
from gvsl.finetune.heldout import class_dice
from gvsl.finetune.model import build_segmentation_net
from gvsl.networks.backbone import pad_to_multiple
from gvsl.segment.model import SegmentationNet

LAYERS = ("inc", "down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4")
BACKGROUND_VOXELS = 20_000
RIDGE = 1e-2


def donor_arrays(donors: Path, donor: str, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The donor's image as the networks see it (float32 (D, H, W) in [0, 1]) and its label values on that grid."""
    case = Case(donor, donors / "images" / f"{donor}.nii.gz", donors / "labels" / f"{donor}.nii.gz")
    image, label, _ = preprocess_case(case, PrepareConfig(target_spacing=(spacing_mm,) * 3), "MR")
    return sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(label)


def layer_features(model: SegmentationNet, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every backbone layer's output on ``image``, upsampled to its grid: layer -> (voxels, channels) float32."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [getattr(model.unet, name).register_forward_hook(
        lambda module, inputs, output, name=name: outputs.__setitem__(name, output)) for name in LAYERS]
    x = torch.from_numpy(image)[None, None]
    try:
        with torch.no_grad():
            model.unet(x)
    finally:
        for hook in hooks:
            hook.remove()
    shape = image.shape
    pads = pad_to_multiple(shape)
    padded = [size + before + after for size, (before, after) in zip(shape, pads)]
    crop = (slice(None), slice(None), *(slice(before, before + size) for (before, _), size in zip(pads, shape)))
    features = {}
    for name, output in outputs.items():
        # The backbone pads its input on both sides to a multiple of 16: bring every layer to that padded grid,
        # then cut the image's voxels out of it, as the backbone does with its own output.
        if list(output.shape[2:]) != padded:
            output = F.interpolate(output, size=padded, mode="trilinear", align_corners=False)
        features[name] = output[crop][0].reshape(output.shape[1], -1).T.numpy()
    return features


def effective_rank(features: np.ndarray) -> float:
    """(Σλ)² / Σλ² of the channel covariance's eigenvalues of (voxels, channels) ``features``."""
    eigenvalues = np.clip(np.linalg.eigvalsh(np.cov(features, rowvar=False)), 0, None)
    return float(eigenvalues.sum() ** 2 / max((eigenvalues ** 2).sum(), 1e-30))


def probe_dice(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
               test_labels: np.ndarray, values: Sequence[int], seed: int = 0) -> float:
    """Mean Dice over ``values`` of the ridge probe (see the module doc) fit on train, applied to test."""
    rng = np.random.default_rng(seed)
    background = np.flatnonzero(train_labels == 0)
    rows = np.concatenate([np.flatnonzero(train_labels == v) for v in values]
                          + [rng.choice(background, min(BACKGROUND_VOXELS, len(background)), replace=False)])
    x = train_features[rows].astype(np.float64)
    mean, sd = x.mean(0), x.std(0) + 1e-6
    x = np.c_[(x - mean) / sd, np.ones(len(rows))]
    classes = np.array([0, *values])
    targets = (train_labels[rows, None] == classes[None]).astype(np.float64)
    weights = np.linalg.solve(x.T @ x + RIDGE * len(rows) * np.eye(x.shape[1]), x.T @ targets)
    predicted = classes[np.argmax(np.c_[(test_features - mean) / sd, np.ones(len(test_features))] @ weights, 1)]
    return float(np.mean([d for d in class_dice(predicted, test_labels, values) if d is not None]))


def probe(checkpoint: str, widths: Sequence[int], train: tuple[np.ndarray, np.ndarray],
          test: tuple[np.ndarray, np.ndarray], values: Sequence[int]) -> dict[str, dict[str, float]]:
    mode, init = ("scratch", None) if checkpoint == "random" else ("finetune", checkpoint)
    model = build_segmentation_net(mode, len(values) + 1, 0, init, widths).eval()
    train_features, test_features = layer_features(model, train[0]), layer_features(model, test[0])
    train_labels, test_labels = train[1].ravel(), test[1].ravel()
    return {name: {"effective_rank": round(effective_rank(train_features[name]), 2),
                   "width": int(train_features[name].shape[1]),
                   "probe_dice": round(probe_dice(train_features[name], train_labels, test_features[name],
                                                  test_labels, values), 3)}
            for name in LAYERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("donors", type=Path, help="OUT/donors of benchmarks/transfer.py data")
    parser.add_argument("checkpoints", nargs="+", help="pre-training checkpoints, or 'random'")
    parser.add_argument("--train", default="12876", help="donor the probe is fit on (default 12876)")
    parser.add_argument("--test", default="15496", help="donor it is scored on (default 15496)")
    parser.add_argument("--widths", default="8,16,32,64,128,64,32,16,16", help="widths of the random backbone")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = donor_arrays(args.donors, args.train, args.spacing)
    test = donor_arrays(args.donors, args.test, args.spacing)
    values = [int(v) for v in np.unique(train[1]) if v]
    widths = tuple(int(w) for w in args.widths.split(","))
    results = {}
    print("| checkpoint | " + " | ".join(LAYERS) + " |\n|---|" + "---|" * len(LAYERS))
    for checkpoint in args.checkpoints:
        results[checkpoint] = probe(checkpoint, widths, train, test, values)
        cells = [f"{r['effective_rank']:.1f} / {r['probe_dice']:.3f}" for r in results[checkpoint].values()]
        print(f"| {checkpoint} | " + " | ".join(cells) + " |", flush=True)
    print("(cells: effective rank / probe Dice)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
