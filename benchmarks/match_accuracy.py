"""How accurate a checkpoint's matches are, on sample heads whose true correspondence is known.

Writes sample heads (``gvsl.sample_data.write_sample_heads``: the MNI152 T1 template under known random
rotations, scalings, shifts and smooth deformations), matches each consecutive pair with ``gvsl match``, and
measures, for points of the fixed head's brain, how far the matched point lands from the true one:
``|moving.to_template(T(p)) - fixed.to_template(p)|`` in template millimetres. The same error for no
registration (T = identity; the heads share a physical frame) is the baseline a useful match must beat.

    python benchmarks/match_accuracy.py --checkpoint RUN/checkpoints/iter_000800.pt [--heads 4] [--spacing 3]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvsl.cli import main as gvsl
from gvsl.sample_data import SampleHead, write_sample_heads


def errors_mm(fixed: SampleHead, moving: SampleHead, transform: sitk.Transform, points: int, seed: int) -> np.ndarray:
    """Correspondence errors at up to ``points`` random brain voxels of the fixed head."""
    labels = sitk.ReadImage(str(fixed.labels))
    index = np.argwhere(sitk.GetArrayViewFromImage(labels) > 0)[:, ::-1]  # (x, y, z)
    index = index[np.random.default_rng(seed).choice(len(index), min(points, len(index)), replace=False)]
    out = []
    for voxel in index:
        p = labels.TransformIndexToPhysicalPoint([int(i) for i in voxel])
        truth = np.asarray(fixed.to_template.TransformPoint(p))
        out.append(np.linalg.norm(np.asarray(moving.to_template.TransformPoint(transform.TransformPoint(p))) - truth))
    return np.asarray(out)


def summary(errors: np.ndarray) -> dict[str, float]:
    return {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)),
            "p90_mm": float(np.percentile(errors, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--heads", type=int, default=4, help="sample heads; consecutive pairs are matched")
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size of the heads, mm (default 3)")
    parser.add_argument("--points", type=int, default=2000, help="brain points per pair (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the heads (default 7: not the demo's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        heads = write_sample_heads(Path(work), n_subjects=args.heads, spacing=args.spacing, seed=args.seed)
        matched, unregistered = [], []
        for n, (fixed, moving) in enumerate(zip(heads, heads[1:])):
            out = Path(work) / f"match-{n}"
            status = gvsl(["match", str(fixed.volume), str(moving.volume), "--checkpoint", args.checkpoint,
                           "--out", str(out), "--device", args.device, "--fixed-modality", "MR",
                           "--moving-modality", "MR"])
            if status != 0:
                raise SystemExit(f"gvsl match failed on pair {n}")
            transform = sitk.ReadTransform(str(out / "transform.h5"))
            matched.append(errors_mm(fixed, moving, transform, args.points, n))
            unregistered.append(errors_mm(fixed, moving, sitk.Transform(3, sitk.sitkIdentity), args.points, n))
            metrics = json.loads((out / "metrics.json").read_text())
            print(f"pair {n}: matched {summary(matched[-1])}, unregistered {summary(unregistered[-1])}, "
                  f"ncc {metrics['ncc_before']:.3f} -> {metrics['ncc_after']:.3f}, "
                  f"folding {metrics['nonpositive_jacobian_percent']:.3f} %")
    print(json.dumps({"checkpoint": args.checkpoint, "pairs": len(matched),
                      "matched": summary(np.concatenate(matched)),
                      "unregistered": summary(np.concatenate(unregistered))}))


if __name__ == "__main__":
    main()
