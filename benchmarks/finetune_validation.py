"""Fine-tuning: seconds of one validation against seconds of one training step, as ``gvsl finetune`` runs them.

Usage: ``python benchmarks/finetune_validation.py [--spacing 2] [--patch 96] [--batch 2] [--channels default]
[--val-windows 16] [--steps 2] [--validations 2] [--device cpu]``.

The case is real: the MNI152 2009 T1 template at 2 mm (``gvsl.sample_data.load_mni(2.0)``) with its tissue labels
(``tissue_labels``: grey and white matter), cached as ``gvsl finetune`` caches it on the ``--spacing`` grid
(2 mm: 94 x 116 x 98 voxels; 1 mm, the default of ``gvsl finetune``: 188 x 232 x 196). The trainer is the run's own
(``FinetuneTrainer``, mode scratch: weights do not change the time), with augmentation as configured by default.
Timed: ``trainer.step`` on the run's own batches (after one untimed step), then ``trainer.validate`` (Dice on
``--val-windows`` fixed crops, or whole volumes by sliding windows with 0; ``best.pt``), with the time of the
network's forward passes (a hook on the model) beside it. Prints one JSON line per timing and a summary line with
the ratio.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch


def make_case(root: Path) -> Path:
    """An nnU-Net folder with the 2 mm MNI T1 and its grey/white matter labels; returns the folder."""
    from gvsl.sample_data import load_mni, tissue_labels

    mni = load_mni(2.0)
    for path, image in ((root / "imagesTr" / "mni_0000.nii.gz", mni["t1"]),
                        (root / "labelsTr" / "mni.nii.gz", tissue_labels(mni))):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
    return root


def main() -> None:
    from gvsl.data.preprocess import PrepareConfig
    from gvsl.finetune.cache import open_prepared, prepare_cases
    from gvsl.finetune.config import FinetuneConfig
    from gvsl.finetune.data import find_cases
    from gvsl.finetune.engine import FinetuneTrainer
    from gvsl.labels import make_label_table
    from gvsl.networks import DEFAULT_CHANNELS
    from gvsl.train.config import parse_channels
    from gvsl.train.device import select_device, select_precision
    from gvsl.train.distributed import context_from_environment
    from gvsl.train.events import EventLog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=2.0, help="grid of the cache, mm (default 2)")
    parser.add_argument("--patch", type=int, default=96, help="training crop edge (default 96, as gvsl finetune)")
    parser.add_argument("--batch", type=int, default=2, help="crops per step (default 2, as gvsl finetune)")
    parser.add_argument("--channels", type=parse_channels, default=DEFAULT_CHANNELS, help="widths (default 32..512)")
    parser.add_argument("--val-windows", type=int, default=FinetuneConfig.val_windows,
                        help=f"validation crops, 0 for whole volumes (default {FinetuneConfig.val_windows})")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (default 2)")
    parser.add_argument("--validations", type=int, default=2, help="timed validations (default 2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = select_device(args.device)
    precision = select_precision("auto", device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases, _ = find_cases(make_case(root / "data"))
        prepare_cases(cases, root / "cache", PrepareConfig(target_spacing=(args.spacing,) * 3))
        cached = open_prepared(root / "cache")
        config = FinetuneConfig(data=str(root / "data"), out=str(root / "run"), mode="scratch",
                                patch=(args.patch,) * 3, batch=args.batch, channels=args.channels,
                                spacing=(args.spacing,) * 3, val_windows=args.val_windows, workers=0,
                                tensorboard=False, progress=False)
        table = make_label_table({1, 2})
        trainer = FinetuneTrainer(config, root / "run", table, cached, cached, {}, context_from_environment(),
                                  device, precision, EventLog(None), None)
        forward = []
        trainer.model.register_forward_pre_hook(lambda *_: forward.append(-time.perf_counter()))
        trainer.model.register_forward_hook(lambda *_: forward.append(forward.pop() + time.perf_counter()))

        def timed(fn) -> float:
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        common = {"shape": cached[0].shape, "spacing": args.spacing, "patch": args.patch, "batch": args.batch,
                  "val_windows": args.val_windows,
                  "device": str(device), "precision": precision.name, "threads": torch.get_num_threads(),
                  "load": os.getloadavg()[0]}
        steps = []
        for i in range(args.steps + 1):
            seconds = timed(functools.partial(trainer.step, *trainer.patch_batches[i]))
            if i:  # the first step warms up allocators and kernels
                steps.append(seconds)
                print(json.dumps({"what": "step", "seconds": round(seconds, 2), **common,
                                  "load": os.getloadavg()[0]}), flush=True)
        validations = []
        for _ in range(args.validations):
            forward.clear()
            start = time.perf_counter()
            trainer.validate()
            seconds = time.perf_counter() - start
            validations.append(seconds)
            print(json.dumps({"what": "validation", "seconds": round(seconds, 2), "forward_passes": len(forward),
                              "forward_seconds": round(sum(forward), 2), **common, "load": os.getloadavg()[0]}),
                  flush=True)
        step, validation = statistics.median(steps), statistics.median(validations)
        print(f"spacing {args.spacing} mm, volume {'x'.join(map(str, cached[0].shape))}, patch {args.patch}, "
              f"batch {args.batch}, validation windows {args.val_windows or 'whole volume'}: step {step:.2f} s, "
              f"validation {validation:.2f} s = {validation / step:.2f} steps")


if __name__ == "__main__":
    main()
