"""``gvsl demo --out DIR``: the whole pipeline on a small public sample, on CPU, in a few minutes.

Builds a DICOM collection from the MNI152 template (nilearn), prepares it,
pre-trains a narrow GVSL network, then runs it on two held-out volumes and
writes the warped volume and a PNG panel. Matching here is on the network's
voxel grid (the held-out volumes are padded to a common shape); matching in
physical space is ``gvsl match``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from gvsl.losses import local_ncc_loss
from gvsl.networks import GVSL
from gvsl.train.config import TrainConfig, parse_channels
from gvsl.train.engine import TrainingError, run_training
from gvsl.train.panels import slice_panel, write_png

HELP = "run the whole pipeline on a small public sample (MNI152 heads as DICOM) in a few minutes on CPU"
CHANNELS = "4,8,16,32,64,32,16,8,4"
SPACING_MM = 3.0  # coarse grid: a 48^3 crop covers most of a head, and CPU training stays quick


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="gvsl-demo", metavar="DIR", help="output folder (default ./gvsl-demo)")
    parser.add_argument("--iterations", type=int, default=200, help="pre-training iterations (default 200)")
    parser.add_argument("--patch", type=int, default=48, help="cubic crop size in voxels (default 48)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate (default 1e-3: higher than the paper's, for a short run)")
    parser.add_argument("--channels", type=parse_channels, default=CHANNELS,
                        help=f"nine backbone widths (default {CHANNELS})")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    parser.add_argument("--log-every", type=int, default=20, help="iterations per printed mean loss (default 20)")


def prepare_sample(out: Path) -> tuple[Path, Path]:
    """Training and held-out caches (MR series only, 3 mm) from two sample collections; returns both folders."""
    from gvsl.data import PrepareConfig, prepare_cache
    from gvsl.io import ScanOptions
    from gvsl.sample_data import write_sample_collection

    config = PrepareConfig(target_spacing=(SPACING_MM,) * 3, selection=ScanOptions(modalities=("MR",)))
    caches = []
    for name, subjects, seed in (("train", 4, 0), ("held_out", 2, 1)):
        dicom = write_sample_collection(out / "dicom" / name, n_subjects=subjects, seed=seed)
        summary = prepare_cache(dicom, out / "cache" / name, config=config, progress=False)
        print(f"  {name}: {summary.used} volumes cached from {dicom}")
        caches.append(out / "cache" / name)
    return caches[0], caches[1]


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad a (D, H, W) array at the far end of each axis to ``shape``."""
    return np.pad(array, [(0, s - n) for n, s in zip(array.shape, shape)])


@torch.no_grad()
def match_on_network_grid(model: GVSL, fixed: np.ndarray, moving: np.ndarray) -> dict[str, np.ndarray]:
    """Run GVSL with A = fixed, B = moving, both (D, H, W) in [0, 1] (padded to a common shape).

    Returns arrays on the fixed volume's grid: ``warped`` (moving warped onto
    fixed), ``restored`` (fixed through the restoration head) and ``moving``
    (padded/cropped to the fixed grid, unwarped).
    """
    shape = tuple(max(f, m) for f, m in zip(fixed.shape, moving.shape))
    a, b = (torch.from_numpy(pad_to(np.asarray(v, np.float32), shape))[None, None] for v in (fixed, moving))
    model.eval()
    restored, warped, _, _ = model(a, b)
    crop = tuple(slice(0, n) for n in fixed.shape)
    return {"warped": warped[0, 0][crop].numpy(), "restored": restored[0, 0][crop].clamp(0, 1).numpy(),
            "moving": b[0, 0][crop].numpy()}


def similarity(x: np.ndarray, y: np.ndarray) -> float:
    """1 - local NCC loss between two (D, H, W) arrays (higher is more similar)."""
    return 1 - float(local_ncc_loss(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]))


def print_event(record: dict) -> None:
    if record["event"] == "iteration":
        print(f"  iteration {record['iteration']:4d}/{record['iterations']}  mean loss {record['loss']:.4f}  "
              f"(NCC {record['ncc']:.4f}, MSE {record['mse']:.4f}, smoothness {record['smooth']:.5f})  "
              f"{record['it_per_s']:.2f} it/s", flush=True)


def run(args: argparse.Namespace) -> int:
    from gvsl.data import open_cache

    out = Path(args.out)
    started = time.perf_counter()
    try:
        print(f"1/4 Writing the sample DICOM collection and preparing it in {out} ...", flush=True)
        train_cache, held_out_cache = prepare_sample(out)
        print(f"2/4 Pre-training a narrow GVSL network ({args.iterations} iterations, {args.patch}^3 crops) ...",
              flush=True)
        config = TrainConfig(data=str(train_cache), out=str(out / "run"), iterations=args.iterations,
                             patch=args.patch, batch=1, channels=args.channels, lr=args.lr, device=args.device,
                             workers=0, checkpoint_every=max(1, args.iterations // 3), log_every=args.log_every,
                             image_every=max(1, args.iterations // 3), progress=False)
        result = run_training(config, on_event=print_event)
        if result.stopped:
            print(f"Stopped at iteration {result.iteration}; checkpoint {result.checkpoint}")
            return 0
        print("3/4 Matching two held-out volumes ...", flush=True)
        fixed_entry, moving_entry = open_cache(held_out_cache)[:2]
        fixed = np.asarray(fixed_entry.array(), np.float32)
        views = match_on_network_grid(result.model.cpu(), fixed, np.asarray(moving_entry.array(), np.float32))
        print(f"  similarity to the fixed volume (1 - local NCC loss): moving {similarity(views['moving'], fixed):.3f}"
              f", warped {similarity(views['warped'], fixed):.3f}")
        print("4/4 Writing results ...", flush=True)
        reference = fixed_entry.image()
        outputs = {}
        for name in ("fixed", "moving", "warped"):
            image = sitk.GetImageFromArray(fixed if name == "fixed" else views[name])
            image.CopyInformation(reference)
            outputs[name] = out / "match" / f"{name}.nii.gz"
            outputs[name].parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(outputs[name]))
        panel = write_png(out / "match" / "panel.png",
                          slice_panel([fixed, views["moving"], views["warped"], views["restored"]]))
    except (ValueError, TrainingError, OSError) as exc:
        print(f"gvsl demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"Done in {time.perf_counter() - started:.0f} s. Everything is in {out.resolve()}:")
    print(f"  DICOM collection        {out / 'dicom'}")
    print(f"  caches                  {train_cache}, {held_out_cache}")
    print(f"  run (config, events)    {result.run_dir}")
    print(f"  checkpoint              {result.checkpoint}")
    print(f"  TensorBoard             tensorboard --logdir {result.run_dir / 'tensorboard'}")
    print(f"  fixed / moving / warped {outputs['fixed']}, {outputs['moving']}, {outputs['warped']}")
    print(f"  panel (fixed | moving | warped | restored; axial, coronal, sagittal)  {panel}")
    return 0
