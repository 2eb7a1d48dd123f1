"""Choosing the DICOM collection: series from Slicer's DICOM database, and the summary of ``gvsl scan --json``.

The database is used through the few ``ctkDICOMDatabase`` methods named below
(duck typing, so tests can pass a stand-in). The backend reads folders, so a
selection from the database becomes a folder of links to the series' files.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MODALITY_TAG = "0008,0060"
SERIES_DESCRIPTION_TAG = "0008,103e"
PATIENT_NAME_TAG = "0010,0010"
STUDY_DESCRIPTION_TAG = "0008,1030"


@dataclass
class DatabaseSeries:
    """One series of the DICOM database, with its patient and study."""

    patient: str
    patient_name: str
    study: str
    study_description: str
    series: str
    description: str
    modality: str
    n_files: int


def database_series(database, modalities: Sequence[str] = ("CT", "MR")) -> list[DatabaseSeries]:
    """The database's series whose modality is in ``modalities`` (all series when empty).

    Uses ``patients()``, ``studiesForPatient()``, ``seriesForStudy()``, ``filesForSeries()`` and
    ``fileValue(file, tag)`` of ``ctkDICOMDatabase``.
    """
    wanted = {m.upper() for m in modalities}
    found = []
    for patient in database.patients():
        for study in database.studiesForPatient(patient):
            for series in database.seriesForStudy(study):
                files = database.filesForSeries(series)
                if not files:
                    continue
                first = files[0]
                modality = database.fileValue(first, MODALITY_TAG).strip().upper()
                if wanted and modality not in wanted:
                    continue
                found.append(DatabaseSeries(
                    patient=patient, patient_name=database.fileValue(first, PATIENT_NAME_TAG),
                    study=study, study_description=database.fileValue(first, STUDY_DESCRIPTION_TAG),
                    series=series, description=database.fileValue(first, SERIES_DESCRIPTION_TAG),
                    modality=modality, n_files=len(files)))
    return found


def link_series_files(database, series_uids: Iterable[str], folder: os.PathLike) -> Path:
    """A folder holding one sub-folder of links (copies where links are not allowed) per selected series.

    The folder is emptied first; returns it. This is what ``gvsl scan`` / ``gvsl pretrain`` read.
    """
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    for number, uid in enumerate(series_uids):
        target = folder / f"series_{number:05d}"
        target.mkdir(parents=True)
        for index, source in enumerate(database.filesForSeries(uid)):
            link = target / f"{index:05d}_{Path(source).name}"
            try:
                link.symlink_to(source)
            except OSError:
                shutil.copy2(source, link)
    return folder


@dataclass
class ScanSummary:
    """What ``gvsl scan --json`` found: counts and size of the usable series, and why others were skipped."""

    n_series: int
    n_usable: int
    usable_bytes: int
    modalities: dict[str, int]
    reasons: dict[str, int]

    def describe(self) -> str:
        size = f"{self.usable_bytes / 1e9:.2f} GB" if self.usable_bytes >= 1e8 else f"{self.usable_bytes / 1e6:.1f} MB"
        kinds = ", ".join(f"{n} {m}" for m, n in sorted(self.modalities.items()))
        text = f"{self.n_usable} usable of {self.n_series} series ({kinds or 'none'}), {size}"
        skipped = "; ".join(f"{n}× {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return text + (f". Skipped: {skipped}" if skipped else "")


def summarize_scan(json_text: str) -> ScanSummary:
    """Summary of ``gvsl scan PATH --json`` output (a JSON list of series; unknown fields are ignored)."""
    records = [r for r in json.loads(json_text) if isinstance(r, dict)]
    usable = [r for r in records if r.get("usable", True)]
    modalities: dict[str, int] = {}
    for record in usable:
        modality = record.get("modality") or "?"
        modalities[modality] = modalities.get(modality, 0) + 1
    reasons: dict[str, int] = {}
    for record in records:
        if not record.get("usable", True):
            reason = record.get("reason") or "not usable"
            reasons[reason] = reasons.get(reason, 0) + 1
    return ScanSummary(n_series=len(records), n_usable=len(usable),
                       usable_bytes=sum(int(r.get("size_bytes") or 0) for r in usable),
                       modalities=modalities, reasons=reasons)
