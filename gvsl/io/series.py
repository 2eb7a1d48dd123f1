"""The series model: what discovery found, one record per candidate volume.

Geometry follows SimpleITK: ``size``, ``spacing`` and ``origin`` are in (x, y, z) = (i, j, k) order, millimetres,
LPS patient coordinates; ``direction`` is the row-major 3x3 matrix whose columns are the i, j, k axis directions.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

DICOM = "dicom"
VOLUME = "volume"


def hash_id(value: str, length: int = 16) -> str:
    """A one-way identifier (truncated SHA-256 hex) for a patient/study/series ID or a path; "" stays ""."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length] if value else ""


def error_text(exc: BaseException) -> str:
    """The informative line of an exception message (SimpleITK puts file/line details first, the cause last)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class Geometry:
    """Voxel grid of a volume: (x, y, z) order, mm, LPS."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def describe(self) -> str:
        """Short text, e.g. ``256x256x120 @ 0.98x0.98x2.50 mm``, with ``oblique`` when not axis-aligned."""
        dims = "x".join(str(n) for n in self.size)
        mm = "x".join(f"{s:.2f}" for s in self.spacing)
        oblique = any(0.001 < abs(c) < 0.999 for c in self.direction)
        return f"{dims} @ {mm} mm" + (" oblique" if oblique else "")


@dataclass
class SeriesInfo:
    """One candidate volume: a DICOM series (or one valid part of a split series) or one volume file.

    ``files`` are ordered for reading (DICOM: by position along the slice normal). ``key`` is stable across runs
    and holds no identifier in clear: a hash of the Series Instance UID (plus ``.N`` for a part of a split
    series) or of the volume file's path relative to the scanned root. ``usable`` is False with ``reason`` set
    for anything that cannot become a training volume; ``note`` carries extra facts (e.g. "split 2 of 3").
    """

    key: str
    kind: str
    files: list[str]
    modality: str = ""
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    description: str = ""
    size_bytes: int = 0
    geometry: Geometry | None = None
    usable: bool = True
    reason: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return len(self.files)

    def skip(self, reason: str) -> SeriesInfo:
        """Mark as not usable, with the reason; returns self."""
        self.usable, self.reason = False, reason
        return self

    def to_dict(self, *, identifiers: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; with ``identifiers=False`` the patient/study/series IDs are hashed and paths dropped."""
        out = asdict(self)
        out["n_instances"] = self.n_instances
        if not identifiers:
            out.pop("files")
            for name in ("patient_id", "study_uid", "series_uid"):
                out[name] = hash_id(out[name])
        return out
