"""An exclusive lock on a folder, so that two processes never update one cache at once.

The lock is ``flock`` on the folder itself (POSIX): no lock file is left behind, and the kernel releases the lock
when its process ends however it ends (a SIGKILL included), so a killed run never blocks the next one. Where
``fcntl`` is missing (Windows) the lock is a no-op: concurrent runs there rely on atomic writes alone.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextmanager
def folder_lock(folder: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (which must exist) for the ``with`` block; when another process holds
    it, call ``on_wait()`` once and wait for it."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
