"""A training run's folder: checking and creating it, and the error that tells the user what to do."""
from __future__ import annotations

import tempfile
from pathlib import Path

from gvsl.train.config import CONFIG_NAME
from gvsl.train.state import latest_checkpoint, list_checkpoints

CACHE_NAME = "cache"  # the run's cache folder inside the run folder, unless --cache names another


class TrainingError(RuntimeError):
    """A failure whose message tells the user what to do."""


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create/check the run folder before anything is trained; ValueError/TrainingError with a clear message.

    A new run refuses a folder holding checkpoints (nothing trained is
    overwritten; a folder left by a run that failed before its first
    checkpoint is reused, its events appended to); a resumed run needs its
    config and a checkpoint. Both need write access.
    """
    if resume:
        if not (run_dir / CONFIG_NAME).is_file() or latest_checkpoint(run_dir) is None:
            raise ValueError(f"{run_dir} holds no run to resume (needs {CONFIG_NAME} and a checkpoint)")
    elif list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {run_dir}: {exc.strerror}; "
                            "choose a writable --out") from exc
