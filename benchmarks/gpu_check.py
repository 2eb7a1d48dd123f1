"""Every GPU measurement of the pre-training speed and memory work, unattended, in one run (benchmarks/gpu_check.sh).

Needs PyTorch and this repository only (no MONAI, pydicom or SimpleITK): steps on pre-loaded random pairs, the data
loader and a short pre-training on a prepared cache (``--cache``; made beforehand with ``--make-cache DIR`` where
SimpleITK and nilearn are installed, e.g. on the development machine: benchmarks/gpu_check_cache is git-ignored, so
name it among the paths carried to the GPU machine).

Sections of the JSON summary (printed last, one line, and written to OUT/gpu_check.json):

- ``environment``: torch, CUDA and cuDNN versions, the device, its total and free memory (bytes);
- ``plan``: what ``gvsl pretrain --batch auto`` chooses on this device for the default network;
- ``steps``: one record of ``benchmarks/step.py`` per configuration at 128³ (fp32 and bf16, batch 1, 2 and 4,
  contiguous and channels-last; cuDNN autotuning on, as in training), each with ``estimated_peak_bytes`` from
  ``gvsl.train.memory_plan`` next to the measured ``peak_memory_bytes``; out of memory is recorded as such;
- ``loader``: the bf16 batch 2 step with pairs from the training data loader (2 workers) instead of pre-loaded;
- ``pretrain``: ``gvsl pretrain CACHE`` for ``--pretrain-minutes`` (the demo's recipe at half the default widths,
  96³ crops, ``--batch auto``: iterations, it/s, the start event's memory plan), its events copied to
  OUT/pretrain_events.jsonl and its weights written as OUT/pretrained_fp16.pt (model only, half precision, 11.8 MB)
  for ``benchmarks/match_accuracy.py --checkpoint``;
- ``original``: with ``--original SRC`` (a checkout of the published GVSL code), its training step (network, its
  three losses, backward, Adam; its CPU augmentation left out) at 128³ batch 1 fp32, as it ships (cuDNN autotuning
  off) and with autotuning on; skipped without SRC.

Order: the plan, bf16 batch 2 and fp32 batch 1 in both layouts, the pre-training, the loader, the original code,
then the rest of the grid. The whole keeps within ``--budget-minutes`` (default 7.5): sections that would start
after it are recorded as skipped, and OUT/gpu_check.json is rewritten after every section, so a run cut short (the
shell script stops it at 8 minutes) still leaves what it measured. ``--quick`` shrinks everything (32³ crops,
narrow widths, one timed iteration, the first four configurations, a 6 s pre-training) so that a CPU test runs
every section of the script in about a minute.

    benchmarks/gpu_check.sh --make-cache benchmarks/gpu_check_cache            # once, where SimpleITK is installed
    benchmarks/gpu_check.sh --cache benchmarks/gpu_check_cache [--original SRC] # on the GPU machine
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/step.py, run as a script or imported
import step  # noqa: E402

from gvsl.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from gvsl.networks import DEFAULT_CHANNELS, GVSL  # noqa: E402
from gvsl.pretrain.recipe import CORRESPONDENCE_RECIPE, recipe_flags  # noqa: E402
from gvsl.train.auto_batch import resolve_batch  # noqa: E402
from gvsl.train.config import TrainConfig  # noqa: E402
from gvsl.train.device import (  # noqa: E402
    is_out_of_memory,
    peak_memory_bytes,
    reset_peak_memory,
    select_device,
    select_precision,
)
from gvsl.train.distributed import DistributedContext  # noqa: E402
from gvsl.train.events import read_events  # noqa: E402
from gvsl.train.memory_plan import estimate_peak_bytes  # noqa: E402
from gvsl.train.state import list_checkpoints  # noqa: E402

QUICK_CHANNELS = (4, 8, 8, 8, 8, 8, 8, 8, 4)
CACHE_SPACING_MM = 2.0  # --make-cache: sample heads of about 90 x 105 x 90 voxels
PRETRAIN_PATCH = 96  # covers most of a 2 mm head
# Half the default widths: 5.9 M parameters, so the half-precision weights (11.8 MB) stay under the 16 MiB a file
# may have to come back from the device machine; the default widths would be 47 MB.
PRETRAIN_CHANNELS = (16, 32, 64, 128, 256, 128, 64, 32, 16)
# The recipe of gvsl demo at this scale, --batch auto.
PRETRAIN_FLAGS = recipe_flags(CORRESPONDENCE_RECIPE)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"),
                   help="output folder (default $OUT, else ./gpu_check_out)")
    p.add_argument("--cache", type=Path, help="a prepared cache for the loader and the pre-training")
    p.add_argument("--original", type=Path, metavar="SRC", help="a checkout of the published GVSL code")
    p.add_argument("--device", default="auto")
    p.add_argument("--budget-minutes", type=float, default=7.5)
    p.add_argument("--pretrain-minutes", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script (seconds on a CPU)")
    p.add_argument("--make-cache", type=Path, metavar="DIR",
                   help="only write 12 sample heads prepared at 2 mm into DIR (needs SimpleITK and nilearn)")
    return p.parse_args(argv)


def make_cache(folder: Path) -> dict[str, Any]:
    """Sample heads (MR series of ``gvsl.sample_data``) prepared at ``CACHE_SPACING_MM`` into ``folder``."""
    from gvsl.data import PrepareConfig, prepare_cache
    from gvsl.io import ScanOptions
    from gvsl.sample_data import write_sample_collection

    config = PrepareConfig(target_spacing=(CACHE_SPACING_MM,) * 3, selection=ScanOptions(modalities=("MR",)))
    with tempfile.TemporaryDirectory() as dicom:
        summary = prepare_cache(write_sample_collection(Path(dicom), n_subjects=12, seed=0), folder, config=config,
                                progress=False)
    return {"cache": str(folder), "volumes": summary.used,
            "bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file())}


class Budget:
    """The run's deadline: ``section`` runs a measurement if time is left, recording errors instead of raising."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + minutes * 60

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, measure: Callable[[], Any], needs_s: float = 0.0) -> Any:
        if self.left_s() < needs_s:
            return {"skipped": f"time budget: {self.left_s():.0f} s left, {name} needs about {needs_s:.0f} s"}
        try:
            return measure()
        except Exception as exc:  # one failed measurement must not lose the others
            return {"error": "out of memory" if is_out_of_memory(exc) else f"{type(exc).__name__}: {exc}"}
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), total_memory_bytes=total, free_memory_bytes=free)
    return info


def plan(device: torch.device) -> dict[str, Any]:
    """``--batch auto`` for the default network on ``device`` (free memory as it is now)."""
    with torch.device("meta"):  # the parameter count, without allocating
        model = GVSL(architecture="correlation")
    config, memory_plan = resolve_batch(TrainConfig(), model, device, select_precision("auto", device),
                                        DistributedContext())
    return {"batch": config.batch, "patch": list(config.patch), "activation_checkpointing":
            config.activation_checkpointing, "plan": memory_plan.to_dict() if memory_plan else None}


def step_record(options: list[str]) -> dict[str, Any]:
    """``benchmarks/step.py`` with ``options``, plus the memory model's estimate for the configuration."""
    args = step.parse_args(options)
    result = step.measure(args)
    with torch.device("meta"):
        model = GVSL(channels=args.channels, architecture=args.architecture)
    result["estimated_peak_bytes"] = estimate_peak_bytes(
        args.batch, args.patch, args.channels, args.architecture, result["precision"],
        sum(p.numel() for p in model.parameters()), args.activation_checkpointing)
    return result


def pretrain(cache: Path, out: Path, minutes: float, device: str, quick: bool) -> dict[str, Any]:
    """``gvsl pretrain`` for ``minutes`` in a temporary run folder; its events copied to OUT/pretrain_events.jsonl and
    its model written in half precision as OUT/pretrained_fp16.pt (few, small files come back from a device)."""
    with tempfile.TemporaryDirectory() as folder:
        return pretrain_in(Path(folder) / "run", cache, out, minutes, device, quick)


def pretrain_in(run_dir: Path, cache: Path, out: Path, minutes: float, device: str, quick: bool) -> dict[str, Any]:
    patch, channels = (32, QUICK_CHANNELS) if quick else (PRETRAIN_PATCH, PRETRAIN_CHANNELS)
    command = [sys.executable, "-m", "gvsl", "pretrain", str(cache), "--out", str(run_dir), "--time-limit",
               f"{minutes * 60:.0f}s", "--device", device, "--no-tensorboard", "--no-progress",
               "--checkpoint-every", "100000", *PRETRAIN_FLAGS, "--patch", str(patch),
               "--channels", ",".join(map(str, channels))]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True)
    record: dict[str, Any] = {"command": command[1:], "exit_status": completed.returncode,
                              "wall_s": round(time.monotonic() - started, 1), "stderr_tail": completed.stderr[-2000:]}
    events = read_events(run_dir / "events.jsonl") if (run_dir / "events.jsonl").is_file() else []
    if events:
        shutil.copyfile(run_dir / "events.jsonl", out / "pretrain_events.jsonl")
    start, end = ({e["event"]: e for e in events}.get(name, {}) for name in ("start", "end"))
    logged = [e for e in events if e["event"] == "iteration"]
    record.update(batch=start.get("config", {}).get("batch"), patch=start.get("config", {}).get("patch"),
                  memory_plan=start.get("memory_plan"), iterations=end.get("iteration"),
                  it_per_s_last=logged[-1]["it_per_s"] if logged else None,
                  peak_memory_bytes=logged[-1]["peak_memory_bytes"] if logged else None)
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        payload = load_checkpoint(checkpoints[-1][1])
        for key in ("optimizer", "scaler", "rng"):
            payload.pop(key, None)
        payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
        weights = save_checkpoint(out / "pretrained_fp16.pt", payload)
        record.update(weights=str(weights), weights_bytes=weights.stat().st_size)
    return record


def original_step(source: Path, device: torch.device, patch: int, iterations: int, autotune: bool
                  ) -> dict[str, Any]:
    """The published code's training step on random pairs: its network, NCC + MSE + gradient loss, Adam."""
    for folder in (source / "PyTorch", source):  # the repository keeps a copy of the code under PyTorch/
        if (folder / "models" / "gvsl.py").is_file():
            sys.path.insert(0, str(folder))
            break
    else:
        raise FileNotFoundError(f"no models/gvsl.py under {source} or {source / 'PyTorch'}")
    from models.gvsl import GVSL as OriginalGVSL
    from utils.losses import MSE, gradient_loss, ncc_loss

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = autotune
    try:
        torch.manual_seed(0)
        model = OriginalGVSL().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        a, a_corrupted, b = (torch.rand(1, 1, patch, patch, patch, device=device) for _ in range(3))
        reset_peak_memory(device)
        times = []
        for _ in range(iterations + 1):  # the first is warm-up
            start = time.perf_counter()
            restored_a, warped_b, _, flow = model(a_corrupted, b)
            loss = ncc_loss(warped_b, a) + MSE(restored_a, a) + gradient_loss(flow)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            float(loss)
            step.synchronize(device)
            times.append(time.perf_counter() - start)
        memory, _ = peak_memory_bytes(device)
        timed = times[1:]
        return {"cudnn_benchmark": autotune, "patch": [patch] * 3, "batch": 1, "precision": "fp32",
                "s_per_it_mean": sum(timed) / len(timed), "peak_memory_bytes": memory}
    finally:
        torch.backends.cudnn.benchmark = previous


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.make_cache:
        summary = make_cache(args.make_cache)
        print(json.dumps(summary))
        return summary
    budget = Budget(args.budget_minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    device = select_device(args.device)
    patch, widths = ("32", ",".join(map(str, QUICK_CHANNELS))) if args.quick else \
        ("128", ",".join(map(str, DEFAULT_CHANNELS)))
    timing = ["--warmup", "1", "--iterations", "1"] if args.quick else ["--warmup", "3", "--iterations", "10"]
    common = ["--device", args.device, "--patch", patch, "--channels", widths, *timing]
    step_s = 5 if args.quick else 25  # what one configuration may take, cuDNN autotuning included
    summary: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        """Record a section, and write the summary so far (a run cut short still leaves its results)."""
        summary[key] = value
        summary["budget_left_s"] = round(budget.left_s(), 1)
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")

    def configurations(wanted: list[tuple[str, int, str]]) -> None:
        for precision, batch, layout in wanted:
            flags = [*common, "--precision", precision, "--batch", str(batch),
                     "--channels-last" if layout == "channels_last" else "--no-channels-last"]
            record = budget.section(f"{precision} batch {batch} {layout}", lambda flags=flags: step_record(flags),
                                    step_s)
            put("steps", [*summary.get("steps", []), {"precision": precision, "batch": batch, "layout": layout,
                                                      **record}])

    put("environment", environment(device))
    put("plan", budget.section("plan", lambda: plan(device)))
    first = [("bf16", 2, "contiguous"), ("bf16", 2, "channels_last"), ("fp32", 1, "contiguous"),
             ("fp32", 1, "channels_last")]
    configurations(first)
    if args.cache is None:
        put("pretrain", {"skipped": "no --cache given"})
        put("loader", {"skipped": "no --cache given"})
    else:
        minutes = min(args.pretrain_minutes, 0.1) if args.quick else args.pretrain_minutes
        put("pretrain", budget.section("pretrain", lambda: pretrain(args.cache, args.out, minutes, args.device,
                                                                    args.quick), minutes * 60 + 60))
        put("loader", budget.section("loader", lambda: step_record(
            [*common, "--precision", "bf16", "--batch", "2", "--data", str(args.cache), "--workers", "2"]), step_s))
    if args.original is None:
        put("original", {"skipped": "no --original SRC given"})
    else:
        patch_side, iterations = (32, 1) if args.quick else (128, 5)
        put("original", [budget.section(f"original, autotuning {autotune}", lambda autotune=autotune: (
            original_step(args.original, device, patch_side, iterations, autotune)), step_s)
            for autotune in (False, True)])
    if not args.quick:  # the rest of the grid, as far as the budget goes
        configurations([(p, b, layout) for p in ("bf16", "fp32") for b in (1, 2, 4)
                        for layout in ("contiguous", "channels_last") if (p, b, layout) not in first])
    put("budget_left_s", round(budget.left_s(), 1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
