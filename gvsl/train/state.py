"""Training state on disk: checkpoint file names in the run folder, what they hold, and derived seeds.

``RUN_DIR/checkpoints/iter_000500.pt`` holds the state after 500 iterations;
the latest is found by scanning. Payload (``gvsl.checkpoints`` format, all
values ``weights_only``-loadable): ``format``, ``version``, ``model``,
``channels``, ``conventions``, ``iteration``, plus ``optimizer`` (Adam state
dict), ``scaler`` (gradient scaler state, empty without float16), ``rng``
(torch CPU and CUDA generator states), ``config`` (the run's settings) and
``world_size``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pt$")


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and keys (e.g. "augment", rank, iteration), the same in every process."""
    text = "/".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def checkpoint_path(run_dir: os.PathLike, iteration: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"iter_{iteration:06d}.pt"


def list_checkpoints(run_dir: os.PathLike) -> list[tuple[int, Path]]:
    """(iteration, path) of the run's checkpoints, oldest first (temporary files are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: os.PathLike) -> Optional[Path]:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def prune_checkpoints(run_dir: os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; returns the deleted paths."""
    doomed = [p for _, p in list_checkpoints(run_dir)[:-keep]] if keep > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def rng_state() -> dict[str, Any]:
    """The global torch generators (CPU, and each CUDA device when initialised)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
