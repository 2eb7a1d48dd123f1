"""Short background jobs (scan, match, segment, sample data, devices): one ``gvsl`` process and one work folder each.

Each job gets its own folder under the modules' work root (``new_work_folder``: the kind, the time and a random
part, so two jobs started in the same second never share one). The folder goes when the job succeeds (``discard``,
once its outputs are in the scene) or is cancelled (``cancel``: the whole process tree is killed first); when it
fails it is kept and ``failure`` names it, with the end of the log, so that the user can look.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from .runs import BackgroundProcess, format_duration

LOG_TAIL_CHARS = 2000  # of a failed job's output, in the message


def new_work_folder(root: os.PathLike, kind: str) -> Path:
    """A new, empty folder ``root/<kind>-<YYYYmmdd-HHMMSS>-<random>`` (``root`` is created if missing)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))


class Job(SimpleNamespace):
    """A running job: its ``process``, its work ``folder`` and, as further attributes, what the caller reads when it
    ends (e.g. ``outDir``, ``labels``)."""

    def __init__(self, process: BackgroundProcess, folder: os.PathLike, **outputs: Any):
        super().__init__(process=process, folder=Path(folder), started=time.monotonic(), **outputs)

    def poll(self) -> Optional[int]:
        """The exit status, or None while it runs (never blocks)."""
        return self.process.poll()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def running_text(self, what: str) -> str:
        """"<what>… 12s" for the job's status label while it runs."""
        return f"{what}… {format_duration(self.elapsed_s())}"

    def discard(self) -> None:
        """Remove the work folder (the job has ended and its outputs are no longer needed)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def cancel(self) -> None:
        """Kill the process and its children now, then remove the work folder."""
        self.process.kill()
        self.discard()

    def failure(self, what: str, code: int) -> str:
        """What to tell the user about a failed job: its status, the end of its output, and the folder kept."""
        output = self.process.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        return f"{what} failed (exit status {code}); its files are kept in {self.folder}.\n{output.rstrip()}"
