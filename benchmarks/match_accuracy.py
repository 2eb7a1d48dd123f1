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

Each head has its own field of view, which can cut the brain where the other head's does not: a fixed point whose
true match is outside the moving scan, or at its very edge, has nothing to be matched with. The column "with a
counterpart" is the mean over the points whose true match lies ``COUNTERPART_MARGIN_VOXELS`` or more inside the
moving scan (``gvsl.sample_data.TrueMatches.with_counterpart``: the half-width of the refinement's 5-voxel NCC
window); the other columns count every point.

Time per pair is wall-clock on this machine (the ``gvsl match`` rows include reading the images and the model).

    python benchmarks/match_accuracy.py --checkpoint RUN/checkpoints/iter_001500.pt [--initial-alignment physical]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvsl.sample_data import brain_point_matches, write_sample_heads

from match_methods import centres_of_mass, gvsl_match, simpleitk_affine, summary, timed  # isort: skip (a sibling)

COUNTERPART_MARGIN_VOXELS = 2


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
    options = ["--device", args.device]
    if args.initial_alignment:
        options += ["--initial-alignment", args.initial_alignment]
    if args.refine is not None:
        options += ["--refine", str(args.refine)]
    rows: dict[str, list[np.ndarray]] = {}
    with_counterpart: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}

    def record(name: str, errors: tuple[np.ndarray, np.ndarray], spent: float | None = None) -> None:
        rows.setdefault(name, []).append(errors[0])
        with_counterpart.setdefault(name, []).append(errors[1])
        if spent is not None:
            seconds.setdefault(name, []).append(spent)

    with tempfile.TemporaryDirectory() as work:
        heads = write_sample_heads(Path(work), n_subjects=args.heads, spacing=args.spacing, seed=args.seed)
        for n, (fixed, moving) in enumerate(zip(heads, heads[1:])):
            images = [sitk.ReadImage(str(h.volume), sitk.sitkFloat32) for h in (fixed, moving)]
            truth = brain_point_matches(fixed, moving, args.points, n)
            counterpart = truth.with_counterpart(COUNTERPART_MARGIN_VOXELS)

            def errors(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
                all_points = truth.errors_mm(transform)  # noqa: B023
                return all_points, all_points[counterpart]  # noqa: B023

            record("no registration", errors(sitk.Transform(3, sitk.sitkIdentity)))
            record("centres of mass", errors(centres_of_mass(*images)))
            if not args.no_baselines:
                transform, spent = timed(lambda: simpleitk_affine(*images))  # noqa: B023
                record("SimpleITK affine", errors(transform), spent)
            match = gvsl_match(fixed.volume, moving.volume, args.checkpoint, Path(work) / f"match-{n}", options)
            metrics = match.metrics
            if match.network is not None:
                record("network", errors(match.network), metrics["network"]["seconds"])
                record("network + refinement", errors(match.final), match.seconds)
            else:
                record("network", errors(match.final), match.seconds)
            print(f"pair {n}: " + ", ".join(f"{name} {rows[name][-1].mean():.2f} mm" for name in rows)
                  + f"; ncc {metrics['ncc_before']:.3f} -> {metrics['ncc_after']:.3f}, folding "
                  f"{metrics['nonpositive_jacobian_percent']:.3f} %", flush=True)
    print("\n| method | mean error (mm) | median | 90th percentile | worst pair mean | with a counterpart: mean, "
          "worst pair | s per pair |")
    print("|---|---|---|---|---|---|---|")
    result = {"checkpoint": args.checkpoint, "pairs": len(heads) - 1, "rows": {}}
    for name, errors in rows.items():
        stats = summary(np.concatenate(errors))
        stats["worst_pair_mean_mm"] = float(max(e.mean() for e in errors))
        stats["pair_means_mm"] = [float(e.mean()) for e in errors]
        stats["with_counterpart_mean_mm"] = float(np.concatenate(with_counterpart[name]).mean())
        stats["with_counterpart_pair_means_mm"] = [float(e.mean()) for e in with_counterpart[name]]
        stats["with_counterpart_share"] = float(sum(map(len, with_counterpart[name])) / sum(map(len, errors)))
        if name in seconds:
            stats["seconds_per_pair"] = float(np.mean(seconds[name]))
        result["rows"][name] = stats
        time_text = f"{stats['seconds_per_pair']:.1f}" if name in seconds else "–"
        print(f"| {name} | {stats['mean_mm']:.2f} | {stats['median_mm']:.2f} | {stats['p90_mm']:.2f} | "
              f"{stats['worst_pair_mean_mm']:.2f} | {stats['with_counterpart_mean_mm']:.2f}, "
              f"{max(stats['with_counterpart_pair_means_mm']):.2f} | {time_text} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
