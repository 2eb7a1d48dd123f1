"""Files written whole or not at all: a temporary file beside the target, fsync, rename.

A reader, or a crash at any moment, sees the previous file or the new one, never a part of one. The temporary file
is removed when writing fails; one left by a killed process is recognised by ``is_partial``. The file gets the
permissions an ordinary write would give it (the umask applies).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

if TYPE_CHECKING:
    import SimpleITK as sitk

PARTIAL_SUFFIX = ".partial"


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` with what ``write(file)`` writes to a binary file; returns the path.

    Raises whatever ``write`` or the file system raises (OSError for a full disk or a read-only folder), leaving
    any existing file at ``path`` untouched and no temporary file behind.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        os.chmod(temporary, _ordinary_file_mode())  # mkstemp makes 0600; others on a cluster must read runs too
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """``write_atomically`` for UTF-8 text."""
    return write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def is_partial(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the temporary file of an unfinished ``write_atomically``."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


def _ordinary_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows (not on Windows; the rename is atomic anyway)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_image_atomically(path: str | os.PathLike, image: sitk.Image) -> Path:
    """Write a SimpleITK image whole or not at all: into a temporary folder beside ``path`` under its own name (the
    suffix chooses the format), then renamed onto ``path``. Raises as ``write_atomically`` does (RuntimeError from
    SimpleITK for an image it cannot write)."""
    import shutil

    import SimpleITK as sitk

    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent))
    try:
        sitk.WriteImage(image, str(folder / path.name), useCompression=True)
        with open(folder / path.name, "rb") as file:
            os.fsync(file.fileno())
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _fsync_folder(path.parent)
    return path
