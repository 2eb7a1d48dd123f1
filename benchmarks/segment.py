"""Segmentation inference: seconds and peak memory for one volume, ours vs a plain window loop.

Usage: ``python benchmarks/segment.py [--size 256] [--window 128] [--device cpu|cuda] [--channels default]``.

Each method runs in its own process (so peak memory is its own: process peak RSS on CPU, CUDA max allocated on
GPU), on the same real volume (the MNI152 T1 template at 1 mm, zero-padded or cropped to SIZE^3, already on the
canonical grid) with the same random-weight network of the given widths (3 classes):

- ``ours``: ``gvsl.segment.predict_probabilities`` + argmax, as ``gvsl segment`` runs it: sliding windows,
  Gaussian blending, half overlap, ``--sw-batch`` windows per pass, layout and autocast as ``gvsl segment`` picks
  them (``forward_channels_last``, ``select_inference_precision``);
- ``baseline``: a plain loop over the same half-overlapping windows, batch 1, float32, each window's softmax
  accumulated (uniform weights) into numpy arrays on the CPU, then argmax.

Prints one line per method and the speed-up (baseline seconds / ours seconds).
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time

import numpy as np
import torch

from gvsl.segment.inference import window_starts


def volume(size: int) -> torch.Tensor:
    """(1, 1, size, size, size) float32 in [0, 1]: the MNI T1 template (1 mm) centred in a cube."""
    import SimpleITK as sitk

    from gvsl.sample_data import load_mni

    t1 = sitk.GetArrayFromImage(load_mni(1.0)["t1"])
    t1 = t1 / t1.max()
    out = np.zeros((size,) * 3, np.float32)
    src = tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in t1.shape)
    dst = tuple(slice(max(0, (size - n) // 2), max(0, (size - n) // 2) + min(n, size)) for n in t1.shape)
    out[dst] = t1[src]
    return torch.from_numpy(out)[None, None]


@torch.inference_mode()
def baseline(model: torch.nn.Module, vol: torch.Tensor, window: int, device: torch.device) -> np.ndarray:
    """Plain loop: batch 1, float32, half overlap, numpy accumulation; returns the class map (D, H, W)."""
    shape = vol.shape[2:]
    total, counts = None, np.zeros(shape, np.float32)
    for corner in itertools.product(*(window_starts(s, window, 0.5) for s in shape)):
        box = tuple(slice(c, c + window) for c in corner)
        probs = torch.softmax(model(vol[(0, 0, *box)][None, None].to(device)), dim=1)[0].cpu().numpy()
        if total is None:
            total = np.zeros((probs.shape[0], *shape), np.float32)
        total[(slice(None), *box)] += probs
        counts[box] += 1
    return (total / counts).argmax(axis=0)


def run_one(args: argparse.Namespace) -> dict:
    from gvsl.networks import DEFAULT_CHANNELS
    from gvsl.segment import SegmentationNet, predict_probabilities
    from gvsl.train.device import (
        forward_channels_last,
        peak_memory_bytes,
        reset_peak_memory,
        select_device,
        select_inference_precision,
    )

    device = select_device(args.device)
    torch.manual_seed(0)
    channels = DEFAULT_CHANNELS if args.channels == "default" else tuple(int(c) for c in args.channels.split(","))
    model = SegmentationNet(3, channels).to(device).eval()
    vol = volume(args.size)
    reset_peak_memory(device)
    if args.method == "ours":
        channels_last = forward_channels_last(device)
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
        precision = select_inference_precision("auto", device)
        start = time.perf_counter()
        probs = predict_probabilities(model, vol, (args.window,) * 3, overlap=0.5, sw_batch_size=args.sw_batch,
                                      precision=precision, device=device, channels_last=channels_last)
        probs.argmax(dim=1)
        precision_name = precision.name
    else:
        start = time.perf_counter()
        baseline(model, vol, args.window, device)
        precision_name = "fp32"
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    memory, kind = peak_memory_bytes(device)
    return {"method": args.method, "seconds": round(seconds, 2), "peak_memory_gib": round((memory or 0) / 2 ** 30, 2),
            "memory_kind": kind, "device": str(device), "precision": precision_name, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="cube edge in voxels (default 256)")
    parser.add_argument("--window", type=int, default=128, help="window edge in voxels (default 128)")
    parser.add_argument("--channels", default="default", help="nine widths, or 'default' (32..512)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sw-batch", type=int, default=2, help="windows per pass for ours (default 2)")
    parser.add_argument("--method", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_one(args)))
        return
    results = {}
    for method in ("baseline", "ours"):
        command = [sys.executable, __file__, "--method", method, *sys.argv[1:]]
        line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[method] = json.loads(line)
        print(line, flush=True)
    speedup = results["baseline"]["seconds"] / results["ours"]["seconds"]
    print(f"size {args.size}^3, window {args.window}^3, widths {args.channels}: ours {results['ours']['seconds']} s "
          f"vs baseline {results['baseline']['seconds']} s: {speedup:.2f}x")


if __name__ == "__main__":
    main()
