"""The unlabelled collection as training data (``gvsl finetune --unlabelled DIR``): every labelled case matched onto
every usable scan of DIR (``gvsl.match.match_volumes``: network and refinement), the carried label maps fused into
pseudo-labels. Zhao et al.'s synthesised pairs (CVPR 2019: each labelled image warped onto each scan, with the labels
carried by the same match) are not made: trained on beside the pseudo-labels, they changed neither the model nor the
fused segmentation in eight paired runs (benchmarks/RESULTS.md).

Files, in ``RUN/collection/``::

    scans.json                            the usable scans of DIR (name, source files) and the skipped ones with why
    scans/<scan>.nii.gz                   each usable scan as read (float32; a DICOM series becomes one volume)
    matches/<scan>/<case>.labels.nii.gz   labelled case <case>'s label map carried onto the scan (uint16)
    pseudo/<scan>.labels.nii.gz           the carried maps fused by ``vote``, ``IGNORE_VALUE`` where fewer than
                                          ``min_agreement`` of them agree

Each file is written whole or not at all (``write_image_atomically``): a match whose labels file exists is never
computed again, so a killed run started again (or resumed) goes on from the next match.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.atomic_files import write_image_atomically, write_text_atomically
from gvsl.carry_labels import carry_labels
from gvsl.finetune.cache import read_case
from gvsl.finetune.data import Case
from gvsl.finetune.fusion import fuse_with_confidence
from gvsl.io import SeriesInfo, read_volume, scan
from gvsl.io.series import error_text

COLLECTION_DIR = "collection"
PSEUDO_PREFIX = "unlabelled-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_VOLUME_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", re.IGNORECASE)

Progress = Callable[[int, int, str], None]  # (scans done, scans in all, the scan just done)


@dataclass(frozen=True)
class CollectionCases:
    """What the collection adds to training: ``pseudo`` (each scan with its fused pseudo-labels) and ``notes`` (scans
    left out, and why)."""

    pseudo: list[Case]
    notes: list[str]


@dataclass(frozen=True)
class UnlabelledScan:
    """A usable scan of the collection: a folder-safe unique ``name`` and the discovered ``series``."""

    name: str
    series: SeriesInfo


def scan_name(series: SeriesInfo, taken: set[str]) -> str:
    """A readable, folder-safe name for a scan, unique among ``taken`` (which it joins): a volume file's name
    without its suffix, else the series description and the start of its key."""
    if len(series.files) == 1 and _VOLUME_SUFFIX.search(series.files[0]):
        base = _VOLUME_SUFFIX.sub("", Path(series.files[0]).name)
    else:
        base = f"{series.description or series.modality or 'series'}-{series.key[:8]}"
    base = _UNSAFE.sub("_", base).strip("._-") or "scan"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def find_unlabelled_scans(folder: str | Path, exclude: Sequence[Path] = ()) -> tuple[list[UnlabelledScan], list[str]]:
    """The usable scans under ``folder`` (``gvsl.io.scan``: DICOM series and volume files) other than the files in
    ``exclude`` (the labelled cases' images), and a note for each one left out. ValueError when none is usable."""
    excluded = {Path(p).resolve() for p in exclude}
    scans, notes, taken = [], [], set()
    for series in scan(folder):
        if not series.usable:
            notes.append(f"unlabelled {series.files[0] if series.files else series.key}: left out ({series.reason})")
        elif len(series.files) == 1 and Path(series.files[0]).resolve() in excluded:
            notes.append(f"unlabelled {series.files[0]}: left out (it is a labelled case's image)")
        else:
            scans.append(UnlabelledScan(scan_name(series, taken), series))
    if not scans:
        raise ValueError(f"--unlabelled {folder}: no usable scan found" + (f" ({'; '.join(notes[:3])})" if notes
                                                                            else ""))
    return scans, notes


def kept_scan_file(folder: Path, scan_name: str) -> Path:
    """Where a collection folder keeps scan ``scan_name`` as read."""
    return Path(folder) / "scans" / f"{scan_name}.nii.gz"


def kept_label_maps(folder: Path, scan_name: str) -> list[Path]:
    """The label maps a collection folder keeps carried onto scan ``scan_name``, one per labelled case."""
    return sorted((Path(folder) / "matches" / scan_name).glob("*.labels.nii.gz"))


def _label_values(labelled: Sequence[tuple[sitk.Image, sitk.Image]]) -> list[int]:
    return sorted({int(v) for _, labels in labelled for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v})


def _array_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


class CollectionMatcher:
    """Matches labelled cases onto the collection's scans and keeps the results in ``folder`` (module doc).

    ``match(fixed, moving) -> transform`` (fixed point -> moving point, LPS mm) is the registration, e.g.
    ``gvsl.match.match_volumes`` with a network; ``min_agreement``: the share of carried maps that must agree for a
    voxel's pseudo-label to count.
    """

    def __init__(self, folder: Path, match: Callable[[sitk.Image, sitk.Image], sitk.Transform],
                 min_agreement: float = 1.0):
        self.folder, self.match, self.min_agreement = Path(folder), match, float(min_agreement)

    def scan_file(self, scan: UnlabelledScan) -> Path:
        return kept_scan_file(self.folder, scan.name)

    def carried_file(self, scan: UnlabelledScan, case: Case) -> Path:
        """``case``'s labels carried onto ``scan``."""
        return self.folder / "matches" / scan.name / f"{_UNSAFE.sub('_', case.name)}.labels.nii.gz"

    def pseudo_file(self, scan: UnlabelledScan) -> Path:
        return self.folder / "pseudo" / f"{scan.name}.labels.nii.gz"

    def run(self, labelled_cases: Sequence[Case], scans: Sequence[UnlabelledScan], notes: Sequence[str] = (),
            on_progress: Optional[Progress] = None, workers: int = 1) -> CollectionCases:
        """Match every case onto every scan (what is already in ``folder`` is reused), fuse, and return the cases to
        train on (in the order of ``scans``). A scan that cannot be read or matched is left out with a note; the rest
        goes on. ``workers`` > 1: that many scans are matched at once, each in its own process with its share of the
        CPU threads (``match`` must pickle, as ``NetworkRegistration`` does)."""
        for sub in ("scans", "matches", "pseudo"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        values = _label_values([read_case(case) for case in labelled_cases])
        left_out: dict[int, Optional[str]] = {}  # scan index -> None (matched) or why it was left out

        def finished(index: int, reason: Optional[str]) -> None:
            left_out[index] = reason
            if on_progress is not None:
                on_progress(len(left_out), len(scans), scans[index].name)

        workers = min(int(workers), len(scans))
        if workers > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_use_threads, initargs=(threads,)) as pool:
                futures = {pool.submit(self.match_scan, scan, labelled_cases, values): n
                           for n, scan in enumerate(scans)}
                for future in as_completed(futures):
                    finished(futures[future], future.result())
        else:
            for n, scan in enumerate(scans):
                finished(n, self.match_scan(scan, labelled_cases, values))
        notes = [*notes, *(f"unlabelled {scans[n].name}: left out ({reason})"
                           for n, reason in sorted(left_out.items()) if reason is not None)]
        matched = [scan for n, scan in enumerate(scans) if left_out[n] is None]
        pseudo = [Case(PSEUDO_PREFIX + scan.name, self.scan_file(scan), self.pseudo_file(scan)) for scan in matched]
        write_text_atomically(self.folder / "scans.json", json.dumps(
            {"scans": [{"name": s.name, "files": s.series.files[:1], "n_files": len(s.series.files)} for s in scans],
             "notes": notes}, indent=1) + "\n")
        return CollectionCases(pseudo, notes)

    def match_scan(self, scan: UnlabelledScan, labelled_cases: Sequence[Case], values: Sequence[int]
                   ) -> Optional[str]:
        """Carry every labelled case onto ``scan`` and write its fused pseudo-labels: None, or why the scan is left
        out (it cannot be read, or is not a volume that can be matched)."""
        try:
            fixed = self._scan_image(scan)
            maps = [self._carried(scan, case, fixed, *read_case(case)) for case in labelled_cases]
        except (ValueError, RuntimeError) as exc:
            return error_text(exc)
        fused = fuse_with_confidence([sitk.GetArrayFromImage(m) for m in maps], values, self.min_agreement)
        write_image_atomically(self.pseudo_file(scan), _array_image(fused, fixed))
        return None

    def _scan_image(self, scan: UnlabelledScan) -> sitk.Image:
        path = self.scan_file(scan)
        if not path.is_file():
            write_image_atomically(path, read_volume(scan.series))
        return sitk.ReadImage(str(path), sitk.sitkFloat32)

    def _carried(self, scan: UnlabelledScan, case: Case, fixed: sitk.Image, image: sitk.Image, labels: sitk.Image
                 ) -> sitk.Image:
        """``case``'s labels carried onto ``scan`` (computed once: read back when its file exists)."""
        labels_file = self.carried_file(scan, case)
        if labels_file.is_file():
            return sitk.ReadImage(str(labels_file), sitk.sitkUInt16)
        labels_file.parent.mkdir(parents=True, exist_ok=True)
        carried = carry_labels(sitk.Cast(labels, sitk.sitkUInt16), fixed, self.match(fixed, image))
        write_image_atomically(labels_file, carried)
        return carried


def _use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def default_match_workers(device: str) -> int:
    """Scans matched at once when not told: one per four CPU cores (a match runs well on four threads), one on a GPU
    (the network's memory is the limit there)."""
    if device not in ("cpu", "auto") or (device == "auto" and _has_gpu()):
        return 1
    return max(1, (os.cpu_count() or 1) // 4)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


class NetworkRegistration:
    """``gvsl match``'s registration as a function (fixed, moving) -> transform (fixed point -> moving point, LPS
    mm): the initial alignment, ``checkpoint``'s network (a GVSL pre-training checkpoint) and the refinement, with the
    checkpoint's preprocessing. Without a checkpoint, ``gvsl match``'s untrained network: the refinement carries the
    match (benchmarks/RESULTS.md: the same Dice from an untrained network). The network is loaded at once (a wrong
    checkpoint fails here); a copy sent to another process loads it again there."""

    def __init__(self, checkpoint: Optional[str], device: str):
        self.checkpoint, self.device = checkpoint, device
        self._match = self._load()

    def __getstate__(self) -> dict:
        return {"checkpoint": self.checkpoint, "device": self.device}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["checkpoint"], state["device"])

    def __call__(self, fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
        return self._match(fixed, moving)

    def _load(self) -> Callable[[sitk.Image, sitk.Image], sitk.Transform]:
        from gvsl.checkpoints import load_checkpoint, load_gvsl, untrained_gvsl
        from gvsl.match import MatchOptions, match_volumes
        from gvsl.match.options import match_config_for
        from gvsl.train.device import select_device

        torch_device = select_device(self.device)
        if self.checkpoint:
            payload = load_checkpoint(self.checkpoint)
            model, _ = load_gvsl(payload, device=torch_device, name=str(self.checkpoint))
        else:
            payload, model = {}, untrained_gvsl().to(torch_device)
        config = match_config_for(MatchOptions(device=self.device), payload)
        return lambda fixed, moving: match_volumes(fixed, moving, model, config=config, device=torch_device).transform
