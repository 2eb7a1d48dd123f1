"""How accurate matches are, on sample heads whose true correspondence is known, beside classical baselines.

Writes sample heads (``gvsl.sample_data.write_sample_heads``: the MNI152 T1 template under known random
rotations, scalings, shifts and smooth deformations), matches each consecutive pair and measures, for points of the
fixed head's brain, how far the matched point lands from the true one: ``|moving.to_template(T(p)) -
fixed.to_template(p)|`` in template millimetres. Rows:

- ``no registration``: T = identity (the heads share a physical frame);
- ``centres of mass``: the initial alignment alone (a translation);
- ``SimpleITK affine``: correlation metric, centres-of-mass start, 2 levels (a classical baseline);
- ``network``: ``gvsl match --refine 0`` (what the pre-training learned);
- ``network + refinement``: ``gvsl match`` with its default refinement (``--refine N`` to change it).

Time per pair is wall-clock on this machine (the ``gvsl match`` rows include reading the images and the model).

    python benchmarks/match_accuracy.py --checkpoint RUN/checkpoints/iter_001500.pt [--initial-alignment physical]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from gvsl.cli import main as gvsl
from gvsl.sample_data import SampleHead, correspondence_errors_mm, write_sample_heads


def summary(errors: np.ndarray) -> dict[str, float]:
    return {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)),
            "p90_mm": float(np.percentile(errors, 90))}


def centres_of_mass(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """The translation taking the fixed image's centre of mass to the moving image's (ITK MOMENTS)."""
    return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)


def simpleitk_affine(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """A classical affine registration: correlation, centres-of-mass start, regular-step gradient descent with
    physical-shift scales, shrink factors 2 and 1 (smoothing 1 and 0 voxels)."""
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1, 0])
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def timed(compute: Callable[[], sitk.Transform]) -> tuple[sitk.Transform, float]:
    started = time.perf_counter()
    transform = compute()
    return transform, time.perf_counter() - started


def gvsl_match(fixed: SampleHead, moving: SampleHead, out: Path, args: argparse.Namespace) -> dict:
    """``gvsl match`` on one pair: its metrics, the final transform and, when refined, the network's alone."""
    command = ["match", str(fixed.volume), str(moving.volume), "--checkpoint", args.checkpoint, "--out", str(out),
               "--device", args.device, "--fixed-modality", "MR", "--moving-modality", "MR"]
    if args.initial_alignment:
        command += ["--initial-alignment", args.initial_alignment]
    if args.refine is not None:
        command += ["--refine", str(args.refine)]
    if gvsl(command) != 0:
        raise SystemExit(f"gvsl match failed on {fixed.volume.name} -> {moving.volume.name}")
    metrics = json.loads((out / "metrics.json").read_text())
    transforms = {"final": sitk.ReadTransform(str(out / "transform.h5")), "metrics": metrics}
    if (out / "transform_network.h5").is_file():
        transforms["network"] = sitk.ReadTransform(str(out / "transform_network.h5"))
    return transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--heads", type=int, default=4, help="sample heads; consecutive pairs are matched")
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size of the heads, mm (default 3)")
    parser.add_argument("--points", type=int, default=2000, help="brain points per pair (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the heads (default 7: not the demo's)")
    parser.add_argument("--initial-alignment", choices=("centres-of-mass", "physical"),
                        help="passed to gvsl match (default: the checkpoint's)")
    parser.add_argument("--refine", type=int, help="passed to gvsl match (default: its default)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the SimpleITK rows")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}

    def record(name: str, errors: np.ndarray, spent: float | None = None) -> None:
        rows.setdefault(name, []).append(errors)
        if spent is not None:
            seconds.setdefault(name, []).append(spent)

    with tempfile.TemporaryDirectory() as work:
        heads = write_sample_heads(Path(work), n_subjects=args.heads, spacing=args.spacing, seed=args.seed)
        for n, (fixed, moving) in enumerate(zip(heads, heads[1:])):
            images = [sitk.ReadImage(str(h.volume), sitk.sitkFloat32) for h in (fixed, moving)]

            def errors(transform: sitk.Transform) -> np.ndarray:
                return correspondence_errors_mm(fixed, moving, transform, args.points, n)  # noqa: B023

            record("no registration", errors(sitk.Transform(3, sitk.sitkIdentity)))
            record("centres of mass", errors(centres_of_mass(*images)))
            if not args.no_baselines:
                transform, spent = timed(lambda: simpleitk_affine(*images))  # noqa: B023
                record("SimpleITK affine", errors(transform), spent)
            started = time.perf_counter()
            match = gvsl_match(fixed, moving, Path(work) / f"match-{n}", args)
            spent = time.perf_counter() - started
            metrics = match["metrics"]
            if "network" in match:
                record("network", errors(match["network"]), metrics["network"]["seconds"])
                record("network + refinement", errors(match["final"]), spent)
            else:
                record("network", errors(match["final"]), spent)
            print(f"pair {n}: " + ", ".join(f"{name} {rows[name][-1].mean():.2f} mm" for name in rows)
                  + f"; ncc {metrics['ncc_before']:.3f} -> {metrics['ncc_after']:.3f}, folding "
                  f"{metrics['nonpositive_jacobian_percent']:.3f} %", flush=True)
    print("\n| method | mean error (mm) | median | 90th percentile | worst pair mean | s per pair |")
    print("|---|---|---|---|---|---|")
    result = {"checkpoint": args.checkpoint, "pairs": len(heads) - 1, "rows": {}}
    for name, errors in rows.items():
        stats = summary(np.concatenate(errors))
        stats["worst_pair_mean_mm"] = float(max(e.mean() for e in errors))
        stats["pair_means_mm"] = [float(e.mean()) for e in errors]
        if name in seconds:
            stats["seconds_per_pair"] = float(np.mean(seconds[name]))
        result["rows"][name] = stats
        time_text = f"{stats['seconds_per_pair']:.1f}" if name in seconds else "–"
        print(f"| {name} | {stats['mean_mm']:.2f} | {stats['median_mm']:.2f} | {stats['p90_mm']:.2f} | "
              f"{stats['worst_pair_mean_mm']:.2f} | {time_text} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
