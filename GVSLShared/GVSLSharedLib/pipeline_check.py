"""A short, real run of GVSLPretrain's work in a scene: sample heads → pre-training → matches → nodes.

The modules' self-tests run this inside Slicer and the pytest suite runs it against a ``slicer-core`` scene.
Every step is run the way the module runs it: the module's command line in a ``BackgroundProcess``, polled without
blocking (``tick``, e.g. ``slicer.app.processEvents``, keeps Slicer responsive), its outputs turned into nodes by the
module's own functions. A tiny network on a coarse grid keeps the whole check to about a minute on a CPU.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from . import match, runs, samples
from .samples import load_volume

TINY_CHANNELS = "4,4,8,8,8,8,8,4,4"
SPACING_MM = 4.0
PATCH = 32
DEVICE = "cpu"
TIMEOUT_S = 600.0
# Flags for a tiny, quick run (appended to the module's command lines)
TINY_RUN = ["--spacing", str(SPACING_MM), "--workers", "0", "--no-tensorboard", "--log-every", "1"]

Tick = Callable[[], None]


class CheckFailed(RuntimeError):
    """A step of the check did not do what it should (the message says which and shows its log)."""


class SampleDataUnavailable(RuntimeError):
    """The sample heads cannot be made here: the backend or its sample data (nilearn) is not installed."""


def no_op() -> None:
    pass


def run_to_end(process: runs.BackgroundProcess, what: str, tick: Tick = no_op, timeout_s: float = TIMEOUT_S) -> None:
    """Poll ``process`` (calling ``tick`` between polls) until it exits; CheckFailed with its log unless it exits 0
    within ``timeout_s`` (then it is killed)."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            raise CheckFailed(f"{what} did not finish within {timeout_s:.0f} s; its log:\n{_log(process)}")
        tick()
        time.sleep(0.1)
    if process.poll() != 0:
        raise CheckFailed(f"{what} failed (exit status {process.poll()}); its log:\n{_log(process)}")


def _log(process: runs.BackgroundProcess) -> str:
    return process.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


def write_sample_heads(folder: os.PathLike, tick: Tick = no_op, subjects: int = 3) -> list[tuple[Path, Path]]:
    """Sample heads and tissue label maps in ``folder`` (``samples.start_sample``); returns (volume, labels) paths."""
    job = samples.start_sample(folder, samples.HEADS, subjects)
    try:
        run_to_end(job.process, "writing the sample heads", tick)
    except CheckFailed as exc:
        if samples.missing_sample_data(job.poll()):
            raise SampleDataUnavailable(_log(job.process).strip().splitlines()[-1]) from exc
        raise
    return [(volume, labels) for volume, labels, _ in samples.sample_files(folder, samples.HEADS)]


def pretrain(volumes_dir: os.PathLike, run_dir: os.PathLike, tick: Tick = no_op, iterations: int = 4) -> Path:
    """``gvsl pretrain`` as the module starts it, with a tiny network; returns the final checkpoint."""
    run_dir = Path(run_dir)
    command = runs.pretrain_command(volumes_dir, run_dir, iterations=iterations, patch=PATCH, batch=1, lr=1e-3,
                                    precision="fp32", device=DEVICE)
    command += ["--channels", TINY_CHANNELS, *TINY_RUN]
    run_to_end(runs.BackgroundProcess(command, run_dir / runs.PROCESS_LOG_NAME), "gvsl pretrain", tick)
    run = runs.RunFolder(run_dir)
    run.poll()
    if run.progress.state != "finished" or run.progress.iteration != iterations or not run.progress.checkpoint:
        raise CheckFailed(f"gvsl pretrain ended as {run.progress.state!r} at iteration {run.progress.iteration} "
                          f"(expected finished at {iterations}, with a checkpoint)")
    if "loss" not in run.progress.curves:
        raise CheckFailed("gvsl pretrain's events have no loss curve")
    return Path(run.progress.checkpoint)


def match_in_scene(scene, fixed_node, moving_node, checkpoint: os.PathLike, folder: os.PathLike,
                   tick: Tick = no_op) -> dict:
    """``gvsl match`` on two volume nodes, as the module runs it, shown in the scene (``match.show_match``);
    returns the shown nodes and ``metrics``."""
    job = match.start_match(fixed_node, moving_node, checkpoint, folder, DEVICE)
    run_to_end(job.process, "gvsl match", tick)
    result = match.load_match_outputs(job.outDir)
    return {**match.show_match(scene, result, fixed_node), "metrics": result.metrics}


def check_pretrain_and_match(scene, folder: os.PathLike, tick: Tick = no_op) -> dict:
    """The whole check: sample heads, pre-training, a match between two heads in ``scene``.

    Returns ``heads`` (the sample files), ``checkpoint``, ``fixed``/``moving`` (volume nodes) and the shown match
    (``transforms``, ``warped``, ``checkerboard``, ``metrics``); raises CheckFailed when a step or a node is wrong.
    """
    folder = Path(folder)
    heads = write_sample_heads(folder / "sample", tick)
    checkpoint = pretrain(folder / "sample" / "volumes", folder / "pretrain", tick)
    fixed = load_volume(scene, heads[0][0], "GVSL check fixed head")
    moving = load_volume(scene, heads[1][0], "GVSL check moving head")
    shown = match_in_scene(scene, fixed, moving, checkpoint, folder / "match", tick)
    kinds = [node.GetClassName() for node in shown["transforms"]]
    if kinds != ["vtkMRMLGridTransformNode", "vtkMRMLLinearTransformNode"]:
        raise CheckFailed(f"the match gave transform nodes {kinds}, expected a grid under a linear transform")
    for role in ("warped", "checkerboard"):
        node = shown[role]
        if scene.GetNodeByID(node.GetID()) is None or node.GetImageData() is None:
            raise CheckFailed(f"the {role} volume is not in the scene")
        if node.GetImageData().GetDimensions() != fixed.GetImageData().GetDimensions():
            raise CheckFailed(f"the {role} volume is not on the fixed volume's grid")
    if "ncc_after" not in shown["metrics"]:
        raise CheckFailed(f"the match metrics lack ncc_after: {sorted(shown['metrics'])}")
    return {"heads": heads, "checkpoint": checkpoint, "fixed": fixed, "moving": moving, **shown}
