"""Graceful stop: SIGINT/SIGTERM, a ``STOP`` file in the run folder or a time limit ask the loop to save and exit."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Optional

STOP_NAME = "STOP"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by a signal, by ``RUN_DIR/STOP`` or once ``time_limit_s`` seconds have passed since it was made; the
    training loop polls ``requested()`` once per iteration.

    Use as a context manager: handlers are installed on entry (main thread
    only) and the previous ones restored on exit. A second signal while a
    stop is pending raises KeyboardInterrupt (stop now, without saving).
    """

    def __init__(self, run_dir: os.PathLike, time_limit_s: Optional[float] = None):
        self.stop_file = Path(run_dir) / STOP_NAME
        self.watched: list[Path] = []  # STOP files of enclosing folders (``watch``)
        self.reason: Optional[str] = None
        self.deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def watch(self, *folders: os.PathLike) -> StopRequest:
        """Also stop on a ``STOP`` file in each of ``folders`` (e.g. a comparison's folder around its runs)."""
        self.watched += [Path(folder) / STOP_NAME for folder in folders]
        return self

    def requested(self) -> bool:
        if self.reason is None and any(path.exists() for path in (self.stop_file, *self.watched)):
            self.reason = "STOP file"
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "time limit"
        return self.reason is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def clear_stop_file(run_dir: os.PathLike) -> None:
    """Remove a ``STOP`` file left by the stop that a resumed run continues from."""
    (Path(run_dir) / STOP_NAME).unlink(missing_ok=True)
