"""``gvsl demo --out DIR``: the whole pipeline on a small public sample, on a CPU, within a time budget.

Builds a DICOM collection from the MNI152 template (nilearn), prepares it, pre-trains a narrow GVSL network for
``--minutes`` (budgeted by time, so a loaded machine trains fewer iterations but finishes on time), then matches
two held-out sample heads whose true correspondence is known, and reports how far matched points land from the
truth: without registration, with the same network before training, with the network alone, and with the network
refined on the pair. Writes the match (``gvsl match``'s files) and a labelled PNG panel.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.match.outputs import write_outputs
from gvsl.pretrain.engine import build_gvsl, run_training
from gvsl.pretrain.recipe import QUICK_RECIPE, QUICK_SPACING_MM
from gvsl.train.config import TrainConfig, parse_channels
from gvsl.train.panels import labelled_panel, write_png
from gvsl.train.run import TrainingError

CHANNELS = "4,8,16,32,64,32,16,8,4"
SPACING_MM = QUICK_SPACING_MM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="gvsl-demo", metavar="DIR", help="output folder (default ./gvsl-demo)")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="pre-training time budget in minutes (default 3; the whole demo takes about 1.5 more)")
    parser.add_argument("--iterations", type=int, default=100_000,
                        help="stop pre-training earlier at this many iterations (default: the time budget decides)")
    parser.add_argument("--channels", type=parse_channels, default=CHANNELS,
                        help=f"nine backbone widths (default {CHANNELS})")
    parser.add_argument("--subjects", type=int, default=12, help="sample subjects to pre-train on (default 12)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    parser.add_argument("--log-every", type=int, default=50, help="iterations per printed mean loss (default 50)")


def prepare_sample(out: Path, subjects: int) -> Path:
    """A DICOM collection of sample heads (MR series only) prepared at ``SPACING_MM``; returns the cache folder."""
    from gvsl.data import PrepareConfig, prepare_cache
    from gvsl.io import ScanOptions
    from gvsl.sample_data import write_sample_collection

    config = PrepareConfig(target_spacing=(SPACING_MM,) * 3, selection=ScanOptions(modalities=("MR",)))
    dicom = write_sample_collection(out / "dicom", n_subjects=subjects, seed=0)
    summary = prepare_cache(dicom, out / "cache", config=config, progress=False)
    print(f"  {summary.used} volumes cached from {dicom}")
    return out / "cache"


def print_event(record: dict) -> None:
    if record["event"] == "iteration":
        print(f"  iteration {record['iteration']:5d}  mean loss {record['loss']:.4f}  (NCC {record['ncc']:.4f}, "
              f"MSE {record['mse']:.4f}, smoothness {record['smooth']:.5f})  {record['it_per_s']:.2f} it/s", flush=True)
    elif record["event"] == "stop":
        print(f"  time budget reached at iteration {record['iteration']}", flush=True)


def match_held_out(model, untrained, out: Path):
    """Match two held-out sample heads (known truth) with ``model`` and, without refinement, with ``untrained`` (the
    same network before training); returns (heads, ``model``'s match result, mean errors in mm by stage)."""
    from gvsl.data import PrepareConfig
    from gvsl.match import MatchConfig, RefineConfig, match_volumes
    from gvsl.sample_data import brain_point_matches, write_sample_heads

    fixed, moving = write_sample_heads(out / "held_out", n_subjects=2, spacing=3.0, seed=1)
    prepare = PrepareConfig(target_spacing=(SPACING_MM,) * 3)
    images = sitk.ReadImage(str(fixed.volume)), sitk.ReadImage(str(moving.volume))
    before, result = (match_volumes(*images, network.cpu(), fixed_modality="MR", moving_modality="MR",
                                    config=MatchConfig(prepare=prepare, refine=refine))
                      for network, refine in ((untrained, RefineConfig(iterations=0)), (model, RefineConfig())))
    truth = brain_point_matches(fixed, moving)
    errors = {name: float(truth.errors_mm(transform).mean()) for name, transform in (
        ("no registration", sitk.Transform(3, sitk.sitkIdentity)), ("initial alignment", result.initial),
        ("untrained network", before.transform), ("network", result.network_transform),
        ("network + refinement", result.transform))}
    return (fixed, moving), result, errors


def panel_of(result, errors: dict[str, float]) -> np.ndarray:
    """Fixed | moving | moving under the network's match | under the refined match, all on the fixed grid."""
    fixed = result.fixed
    views = [fixed, sitk.Resample(result.moving, fixed, sitk.Transform(3, sitk.sitkIdentity)),
             sitk.Resample(result.moving, fixed, result.network_transform), result.warped]
    arrays = [sitk.GetArrayFromImage(sitk.DICOMOrient(v, "LPS")) for v in views]
    high = float(np.percentile(arrays[0], 99.5))
    titles = ["fixed", f"moving: {errors['no registration']:.1f} mm", f"network: {errors['network']:.1f} mm",
              f"refined: {errors['network + refinement']:.1f} mm"]
    return labelled_panel(arrays, titles, high=high)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    started = time.perf_counter()
    try:
        print(f"1/4 Writing the sample DICOM collection and preparing it in {out} ...", flush=True)
        cache = prepare_sample(out, args.subjects)
        print(f"2/4 Pre-training a narrow GVSL network for {args.minutes:g} minutes ...", flush=True)
        config = TrainConfig(data=str(cache), out=str(out / "run"), iterations=args.iterations,
                             time_limit_s=60 * args.minutes, channels=args.channels, device=args.device, workers=0,
                             checkpoint_every=1000, log_every=args.log_every, image_every=1000, progress=False,
                             **QUICK_RECIPE)
        result = run_training(config, on_event=print_event)
        print(f"3/4 Matching two held-out heads after {result.iteration} iterations ...", flush=True)
        heads, match, errors = match_held_out(result.model, build_gvsl(config, torch.device("cpu")), out)
        for name, error in errors.items():
            print(f"  {name:22s} mean distance of matched brain points from the truth: {error:5.2f} mm")
        # A correlation network matches image structure even untrained, so what the pre-training taught is measured
        # against the same network before training, not against the initial alignment (benchmarks/RESULTS.md).
        gain_mm = errors["untrained network"] - errors["network"]
        if gain_mm > 0:
            print(f"  pre-training brought the network's matches {gain_mm:.2f} mm nearer the truth", flush=True)
        else:
            print(f"  note: {result.iteration} iterations in {args.minutes:g} minutes were too few for the network to "
                  "learn correspondence on this machine (a busy machine trains fewer): it matches no better than the "
                  "same network before training. Train longer with --minutes 10.", flush=True)
        print("4/4 Writing results ...", flush=True)
        written = write_outputs(out / "match", match, {"fixed": str(heads[0].volume), "moving": str(heads[1].volume),
                                                       "checkpoint": str(result.checkpoint),
                                                       "point_errors_mm": errors}, None)
        panel = write_png(out / "match" / "panel.png", panel_of(match, errors))
    except (ValueError, TrainingError, OSError) as exc:
        print(f"gvsl demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"Done in {time.perf_counter() - started:.0f} s. Everything is in {out.resolve()}:")
    print(f"  DICOM collection, cache   {out / 'dicom'}, {cache}")
    print(f"  run (config, events)      {result.run_dir}")
    print(f"  checkpoint                {result.checkpoint}")
    print(f"  TensorBoard               tensorboard --logdir {result.run_dir / 'tensorboard'}")
    print(f"  held-out heads            {heads[0].volume}, {heads[1].volume}")
    print(f"  match (gvsl match files)  {', '.join(str(p) for p in written)}")
    print(f"  picture                   {panel}")
    print("                            (fixed | moving | network | refined; axial, coronal, sagittal)")
    return 0
