"""The preprocessing cache: one memory-mappable ``.npy`` per usable series plus ``manifest.json``.

Layout of a cache folder::

    manifest.json            format, version, preprocessing settings, one entry per series (used or skipped)
    <key>-<fingerprint>.npy  uint16 array [k, j, i] = (D, H, W) on the canonical grid (identity direction, LPS);
                             normalised value = stored / 65535 (see ``from_storage``)

Guarantees: every array is written to a temporary name, flushed and renamed, and the manifest is replaced atomically
after its arrays exist, so an interrupted run never leaves a half-written file behind a manifest entry. A second run
reprocesses only series whose files (names, sizes, modification times) or preprocessing settings changed. The
manifest holds no patient names or birth dates and no file paths: patient/study/series IDs are SHA-256 hashes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..atomic_files import is_partial, write_atomically, write_text_atomically
from ..folder_lock import folder_lock

if TYPE_CHECKING:  # reading a cache needs neither SimpleITK nor pydicom: preparing one imports them where used
    import SimpleITK as sitk

    from ..io import SeriesInfo
    from .preprocess import PrepareConfig

MANIFEST = "manifest.json"
FORMAT = "gvsl-cache"
VERSION = 1
OK, SKIPPED = "ok", "skipped"
_ARRAY_NAME = re.compile(r"^[0-9a-f]{16}(\.\d+)?-[0-9a-f]{8}\.npy$")
_MANIFEST_INTERVAL_S = 5.0
#: Cached values v in [0, 1] are stored as round(v * STORAGE_MAX) in uint16: finer than float16 near 1 (1.5e-5 vs
#: 4.9e-4) and about 4x faster to turn into float32 crops than float16 (measured; see benchmarks/RESULTS.md).
STORAGE_DTYPE = np.uint16
STORAGE_MAX = 65535


class NoUsableDataError(ValueError):
    """Nothing usable was found; the message says why (what was scanned, what was skipped and why)."""


class CacheWriteError(OSError):
    """The cache folder cannot be written (read-only, full disk, ...); what was written before is intact."""


class WorkerDiedError(ChildProcessError):
    """A worker process of ``prepare`` ended abruptly (killed, out of memory, a native crash in a reader); what was
    finished before is in the cache."""


@dataclass
class CacheEntry:
    """One series in the manifest. Geometry of the cached array: ``shape`` (D, H, W) = (k, j, i), ``spacing`` and
    ``origin`` in (x, y, z) mm, LPS, identity direction. ``normalisation``: {"method", "lo", "hi"} mapping source
    physical values v to clip((v - lo) / (hi - lo), 0, 1). ``source``: hashed IDs, description, file count, file
    list hash and original geometry. ``path`` (not stored) is set when read through ``open_cache``."""

    key: str
    status: str
    reason: str = ""
    file: str = ""
    modality: str = ""
    shape: list[int] = field(default_factory=list)
    spacing: list[float] = field(default_factory=list)
    origin: list[float] = field(default_factory=list)
    normalisation: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    path: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out

    def stored(self) -> np.ndarray:
        """The stored array (uint16, see ``from_storage``), memory-mapped read-only, shape (D, H, W)."""
        return np.load(self.path, mmap_mode="r")

    def array(self) -> np.ndarray:
        """The cached volume as float32 values in [0, 1], shape (D, H, W) (read whole)."""
        return from_storage(self.stored())

    def image(self) -> sitk.Image:
        """The cached volume as a float32 SimpleITK image with its geometry (identity direction, LPS)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array())
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        return image


@dataclass
class PrepareSummary:
    """Outcome of ``prepare_cache``. ``used``: usable series now cached (``processed`` this run + ``reused``);
    ``skipped``: reason -> count; ``kept``: entries from earlier runs whose series this source did not contain."""

    used: int
    skipped: dict[str, int]
    manifest_path: Path
    processed: int = 0
    reused: int = 0
    kept: int = 0

    def format(self) -> str:
        lines = [f"{self.used} series used ({self.processed} processed, {self.reused} unchanged), "
                 f"{sum(self.skipped.values())} skipped; manifest: {self.manifest_path}"]
        lines += [f"  skipped {n:4d} x {reason}" for reason, n in sorted(self.skipped.items(), key=lambda x: -x[1])]
        if self.kept:
            lines.append(f"  {self.kept} entries from earlier runs (not in this source) kept")
        return "\n".join(lines)


def to_storage(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> the stored uint16 array."""
    return np.rint(np.clip(values, 0.0, 1.0) * STORAGE_MAX).astype(STORAGE_DTYPE)


def from_storage(stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A stored (uint16) array or slice -> float32 values in [0, 1], written into ``out`` when given."""
    return np.multiply(stored, np.float32(1.0 / STORAGE_MAX), out=out, dtype=np.float32)


def open_cache(cache_dir: Path | str) -> list[CacheEntry]:
    """The usable entries of a cache, with ``path`` set; raises ``NoUsableDataError`` if there is none.

    An entry whose array is missing or damaged (``array_problem``) is left out, with a line on standard error that
    names it, so that training never stops on one bad file.
    """
    cache_dir = Path(cache_dir)
    entries = []
    for entry in _read_manifest(cache_dir)[1].values():
        problem = array_problem(entry) if entry.status == OK else "skipped"
        if not problem:
            entries.append(entry)
        elif entry.status == OK:
            print(f"gvsl: cache entry {entry.key} left out: {problem}", file=sys.stderr, flush=True)
    if not entries:
        raise NoUsableDataError(f"cache {cache_dir} holds no usable volume (run `gvsl prepare` first)")
    return entries


def array_problem(entry: CacheEntry) -> str:
    """Why the array of a usable entry cannot be used ("" when its file holds a uint16 array of the manifest's
    shape; only the .npy header is read)."""
    try:
        array = entry.stored()
    except (OSError, ValueError, EOFError) as exc:
        return f"cached array missing or damaged ({type(exc).__name__}: {exc})"
    if list(array.shape) != entry.shape or array.dtype != STORAGE_DTYPE:
        return f"cached array missing or damaged ({array.dtype} array of shape {list(array.shape)})"
    return ""


def is_cache(path: Path | str) -> bool:
    """Whether ``path`` is a cache folder (holds a GVSL manifest)."""
    return (Path(path) / MANIFEST).is_file()


def prepare_cache(source: Path | str, cache_dir: Path | str, *, config: PrepareConfig | None = None,
                  workers: int = 0, progress: bool = True) -> PrepareSummary:
    """Scan ``source`` (DICOM folder tree, volume files, or both) and cache every usable series in ``cache_dir``.

    ``source`` may also be a cache folder: its files are then checked against its manifest. ``workers``: processes
    for reading/resampling (0: in this process). The manifest afterwards records every series of ``source``: series
    that are now skipped (including by the selection filters) lose their arrays; entries of series not in
    ``source`` (from earlier runs on other folders) are kept. Raises ``NoUsableDataError`` when nothing is usable and
    ``CacheWriteError`` when the cache cannot be written (the manifest then describes what was written).

    Two runs on one cache at once do not interleave: the second waits for the first (``gvsl.folder_lock``).
    """
    if is_cache(source):
        with _update_lock(Path(source)):
            return _validate(Path(source))
    from .preprocess import PrepareConfig

    config = config or PrepareConfig()
    cache_dir = Path(cache_dir)
    ensure_writable(cache_dir)
    with _update_lock(cache_dir):
        return _prepare(source, cache_dir, config, workers, progress)


def _update_lock(cache_dir: Path) -> AbstractContextManager[None]:
    """The cache's lock: a second ``prepare`` on one cache waits for the first (and then reuses its arrays)."""
    def say_waiting() -> None:
        print(f"gvsl: waiting for another process that is updating the cache {cache_dir}", file=sys.stderr,
              flush=True)

    return folder_lock(cache_dir, say_waiting)


def _prepare(source: Path | str, cache_dir: Path, config: PrepareConfig, workers: int, progress: bool
             ) -> PrepareSummary:
    """``prepare_cache`` for a source that is not a cache, under the cache's lock."""
    from ..io import scan

    settings = _settings(config)
    old_settings, old = _read_manifest(cache_dir) if is_cache(cache_dir) else (settings, {})
    if old_settings != settings:
        old = {}  # every array was made with other settings: start over (old files are removed at the end)
    records = scan(source, config.selection, progress=progress)
    entries = dict(old)
    todo, reused = [], 0
    for record in records:
        fingerprint = _fingerprint(record, source, settings)
        previous = old.get(record.key)
        if not record.usable:
            entries[record.key] = _skipped_entry(record, fingerprint, record.reason)
        elif previous and previous.status == OK and previous.fingerprint == fingerprint and \
                (cache_dir / previous.file).is_file():
            reused += 1
        else:
            todo.append((record, fingerprint))
    seen = {r.key for r in records}
    _process_all(todo, cache_dir, config, entries, workers, progress)
    _write_manifest(cache_dir, settings, entries)
    _remove_unreferenced(cache_dir, entries)
    mine = [entries[k] for k in seen]
    summary = PrepareSummary(
        used=sum(e.status == OK for e in mine), skipped=dict(Counter(_category(e.reason) for e in mine
                                                                      if e.status != OK)),
        manifest_path=cache_dir / MANIFEST, processed=sum(entries[r.key].status == OK for r, _ in todo),
        reused=reused, kept=len(set(entries) - seen))
    if summary.used == 0:
        raise NoUsableDataError(f"{_nothing_usable_message(source, records, summary)}; {cache_dir} records this "
                                "in its manifest and can be given to --cache again")
    return summary


def _settings(config: PrepareConfig) -> dict[str, Any]:
    """What the manifest records about how arrays were made (a change invalidates the cache)."""
    return {**config.preprocessing(), "storage": {"dtype": np.dtype(STORAGE_DTYPE).name, "max": STORAGE_MAX}}


def _fingerprint(record: SeriesInfo, root: Path | str, settings: dict[str, Any]) -> str:
    """Hash of the file list (relative names, sizes, modification times) and the preprocessing settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(record.files):
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


def _source(record: SeriesInfo, fingerprint: str) -> dict[str, Any]:
    from ..io import hash_id

    geometry = asdict(record.geometry) if record.geometry else None
    return {"kind": record.kind, "patient": hash_id(record.patient_id), "study": hash_id(record.study_uid),
            "series": hash_id(record.series_uid), "description": record.description, "n_files": record.n_instances,
            "files_hash": fingerprint[:16], "geometry": geometry}


def _skipped_entry(record: SeriesInfo, fingerprint: str, reason: str) -> CacheEntry:
    return CacheEntry(key=record.key, status=SKIPPED, reason=reason, modality=record.modality,
                      fingerprint=fingerprint, source=_source(record, fingerprint), note=record.note)


def _category(reason: str) -> str:
    """A reason without its specifics, for counting (``too few slices (3 < 10)...`` -> ``too few slices``)."""
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def ensure_writable(cache_dir: Path) -> None:
    """Create ``cache_dir`` if needed; CacheWriteError unless a file can be written in it."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):  # nameless where the system allows: a kill leaves nothing
            pass
    except OSError as exc:
        raise CacheWriteError(f"cache folder {cache_dir} is not writable: {exc.strerror or exc}") from exc


def _process_all(todo: list[tuple[SeriesInfo, str]], cache_dir: Path, config: PrepareConfig,
                 entries: dict[str, CacheEntry], workers: int, progress: bool) -> None:
    """Preprocess ``todo`` (in ``workers`` processes, or here), updating ``entries`` and the manifest as arrays land."""
    bar = tqdm(total=len(todo), desc="prepare", unit="series", disable=not progress)
    settings, last_write, finished = _settings(config), time.monotonic(), 0

    def done(entry: CacheEntry) -> None:
        nonlocal last_write, finished
        entries[entry.key] = entry
        finished += 1
        bar.update()
        if time.monotonic() - last_write > _MANIFEST_INTERVAL_S:
            _write_manifest(cache_dir, settings, entries)
            last_write = time.monotonic()

    try:
        if workers <= 0:
            for record, fingerprint in todo:
                done(process_series(record, fingerprint, cache_dir, config))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
                futures = [pool.submit(process_series, r, f, cache_dir, config) for r, f in todo]
                try:
                    for future in as_completed(futures):
                        done(future.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    except BrokenProcessPool as exc:
        _write_manifest(cache_dir, settings, entries)
        raise WorkerDiedError(
            f"a worker process ended abruptly (killed, out of memory, or a native crash in a reader) after "
            f"{finished} of {len(todo)} series; they are kept in {cache_dir}: run again to continue "
            "(with --workers 0 a crash shows the series being read)") from exc
    except (CacheWriteError, KeyboardInterrupt):
        _write_manifest(cache_dir, settings, entries)
        raise
    finally:
        bar.close()


def _init_worker() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core; no oversubscription


def process_series(record: SeriesInfo, fingerprint: str, cache_dir: Path, config: PrepareConfig) -> CacheEntry:
    """Read, preprocess and store one series; a bad series gives a skipped entry with its reason.

    Raises ``CacheWriteError`` when the array cannot be written (nothing half-written is left).
    """
    import SimpleITK as sitk

    from ..io import error_text, read_volume
    from .preprocess import preprocess_image

    try:
        result = preprocess_image(read_volume(record), record.modality, config)
    except (RuntimeError, ValueError, OSError) as exc:
        return _skipped_entry(record, fingerprint, f"cannot be read or preprocessed ({error_text(exc)})")
    array = to_storage(sitk.GetArrayViewFromImage(result.image))
    name = f"{record.key}-{fingerprint[:8]}.npy"
    write_array(cache_dir / name, array)
    image = result.image
    note = "; ".join(filter(None, [record.note, f"{result.non_finite} NaN/Inf voxels set to 0" if result.non_finite
                                   else ""]))
    return CacheEntry(key=record.key, status=OK, file=name, modality=result.modality, shape=list(array.shape),
                      spacing=list(image.GetSpacing()), origin=list(image.GetOrigin()),
                      normalisation=result.normalisation._asdict(), fingerprint=fingerprint,
                      source=_source(record, fingerprint), note=note)


def write_array(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``path`` (.npy) atomically; CacheWriteError when it cannot be written."""
    try:
        write_atomically(path, lambda file: np.save(file, array))
    except OSError as exc:
        raise CacheWriteError(f"cannot write {path.name} in {path.parent}: {exc.strerror or exc}; the cache keeps "
                              "everything written before (free space or fix permissions, then run again)") from exc


def _write_manifest(cache_dir: Path, settings: dict[str, Any], entries: dict[str, CacheEntry]) -> None:
    """Replace the manifest atomically."""
    data = {"format": FORMAT, "version": VERSION, "preprocessing": settings,
            "entries": [entries[k].to_json() for k in sorted(entries)]}
    path = cache_dir / MANIFEST
    try:
        write_text_atomically(path, json.dumps(data, indent=1))
    except OSError as exc:
        raise CacheWriteError(f"cannot write {path}: {exc.strerror or exc}; the previous manifest is intact") from exc


def cache_preprocessing(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The preprocessing a cache was made with (``PrepareConfig.preprocessing()``: target spacing, CT window, MR
    percentiles, ...), e.g. for recording it with a model trained on the cache."""
    settings, _ = _read_manifest(Path(cache_dir))
    return {k: v for k, v in settings.items() if k != "storage"}


def _read_manifest(cache_dir: Path) -> tuple[dict[str, Any], dict[str, CacheEntry]]:
    """(preprocessing settings, entries by key) of a cache; ``path`` of each entry set."""
    path = cache_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoUsableDataError(f"{cache_dir} is not a cache (no {MANIFEST}); run `gvsl prepare` first") from None
    except (OSError, ValueError) as exc:
        raise NoUsableDataError(f"cannot read {path}: {exc}") from exc
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise NoUsableDataError(f"{path} is not a GVSL cache manifest of version {VERSION}")
    entries = {}
    for item in data["entries"]:
        entry = CacheEntry(**item)
        entry.path = cache_dir / entry.file if entry.file else None
        entries[entry.key] = entry
    return data["preprocessing"], entries


def _remove_unreferenced(cache_dir: Path, entries: dict[str, CacheEntry]) -> None:
    """Delete cache arrays (and leftover temporary files) that no manifest entry references."""
    referenced = {e.file for e in entries.values() if e.status == OK}
    for path in cache_dir.iterdir():
        if (_ARRAY_NAME.match(path.name) and path.name not in referenced) or is_partial(path):
            path.unlink(missing_ok=True)


def _validate(cache_dir: Path) -> PrepareSummary:
    """Check a cache's arrays against its manifest; entries whose array is missing or damaged become skipped."""
    settings, entries = _read_manifest(cache_dir)
    for entry in entries.values():
        problem = array_problem(entry) if entry.status == OK else ""
        if problem:
            entry.status, entry.reason = SKIPPED, problem
    if os.access(cache_dir, os.W_OK):
        _write_manifest(cache_dir, settings, entries)
    summary = PrepareSummary(used=sum(e.status == OK for e in entries.values()),
                             skipped=dict(Counter(_category(e.reason) for e in entries.values() if e.status != OK)),
                             manifest_path=cache_dir / MANIFEST, reused=sum(e.status == OK for e in entries.values()))
    if summary.used == 0:
        raise NoUsableDataError(f"cache {cache_dir} holds no usable volume")
    return summary


def _nothing_usable_message(source: Path | str, records: list[SeriesInfo], summary: PrepareSummary) -> str:
    if not records:
        from ..io import nothing_found_message

        return nothing_found_message(source)
    reasons = ", ".join(f"{n} x {reason}" for reason, n in sorted(summary.skipped.items(), key=lambda x: -x[1]))
    return f"no usable CT/MR volume under {source}: {len(records)} series found, all skipped ({reasons})"
