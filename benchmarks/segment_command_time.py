"""Seconds of the whole ``gvsl segment`` command on one scan: the time it prints (reading to writing) and the wall
time of the process (with Python's start and the imports), each repeated.

Usage: ``python benchmarks/segment_command_time.py IMAGE --model RUN [--repeats 3] [--threads 2] [--tree DIR]
[other gvsl segment flags, e.g. --no-matches]``. ``--tree`` runs the ``gvsl`` package of another checkout (a
``git worktree`` of an older commit) with this interpreter, for a before/after on the same machine in the same
minutes.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_segment(image: str, model: str, threads: int, tree: str | None, extra: list[str]) -> tuple[float, float]:
    """(printed seconds, wall seconds) of one ``gvsl segment`` run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if tree:
        env["PYTHONPATH"] = tree
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "gvsl", "segment", image, "--model", model, "--device", "cpu", "--out",
                   str(Path(folder) / "labels.nii.gz"), *extra]
        started = time.perf_counter()
        output = subprocess.run(command, env=env, cwd=tree or None, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - started
    printed = re.search(r" in ([0-9.]+) s$", output.strip().splitlines()[-1])
    return float(printed.group(1)) if printed else float("nan"), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--model", required=True, help="a fine-tuning run folder or a segmentation checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tree", help="the checkout whose gvsl package to run (default: the installed one)")
    args, extra = parser.parse_known_args()  # the rest goes to gvsl segment
    for repeat in range(args.repeats):
        printed, wall = time_segment(args.image, args.model, args.threads, args.tree, extra)
        print(f"run {repeat + 1}: printed {printed:.1f} s, wall {wall:.2f} s", flush=True)


if __name__ == "__main__":
    main()
