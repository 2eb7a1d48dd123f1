"""Files made from the donors: labelled T1-like cases for fine-tuning and testing, unlabelled images for pre-training.

``write_donor_cases``: one T1-like image per donor (``T1_APPEARANCE``, the donor's own anatomy, no deformation)
with its label map restricted to chosen structures (default: the subcortical ones), as
``images/<donor>.nii.gz`` + ``labels/<donor>.nii.gz`` and one ``labels.json`` table. ``write_pretraining_images``:
unlabelled images of random contrast, each donor under several random deformations (``images/<donor>-NN.nii.gz``).
Both are pure functions of their arguments (seeded).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.labels import make_label_table, write_label_table
from gvsl.sample_data import random_warp
from gvsl.synth.brain_images import (
    T1_APPEARANCE,
    VARIED_T1_APPEARANCE,
    Appearance,
    labels_on,
    synthesize,
    tissue_map,
)
from gvsl.synth.donors import OPEN_DONORS, atlas_structures, checked_donor, donor_labels, subcortical_values

LABELS_NAME = "labels.json"


@lru_cache(maxsize=8)
def donor_tissues(donor: str) -> sitk.Image:
    """The donor's tissue map (``tissue_map``; a few seconds, so kept for the process)."""
    return tissue_map(donor_labels(donor), {v: s.name for v, s in atlas_structures().items()})


def structure_table(values: Iterable[int]) -> dict:
    """The label table of atlas ``values`` (names such as "L-putamen")."""
    structures = atlas_structures()
    return make_label_table(values, {v: structures[v].full_name for v in values})


def keep_values(labels: sitk.Image, values: Sequence[int]) -> sitk.Image:
    """``labels`` with every value not in ``values`` set to 0."""
    array = sitk.GetArrayFromImage(labels)
    array[~np.isin(array, list(values))] = 0
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(labels)
    return out


def write_donor_cases(out: Path | str, donors: Sequence[str] = OPEN_DONORS, spacing_mm: float = 2.0,
                      values: Optional[Sequence[int]] = None, seed: int = 0) -> dict[str, tuple[Path, Path]]:
    """Write each donor's T1-like image and label map (``values``, default the subcortical structures present);
    returns donor -> (image, labels) paths. The table of names is ``out/labels.json``."""
    donors = [checked_donor(d) for d in donors]  # all refused before anything is written
    out = Path(out)
    values = list(values) if values is not None else subcortical_values()
    written, present = {}, set()
    for n, donor in enumerate(donors):
        tissues = donor_tissues(donor)
        image = synthesize(tissues, spacing_mm, np.random.default_rng([seed, n]), T1_APPEARANCE)
        labels = keep_values(labels_on(donor_labels(donor), image), values)
        present |= {int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v}
        paths = (out / "images" / f"{donor}.nii.gz", out / "labels" / f"{donor}.nii.gz")
        for path, volume in zip(paths, (image, labels)):
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(volume, str(path), useCompression=True)
        written[donor] = paths
    write_label_table(structure_table(sorted(present)), out / LABELS_NAME)
    return written


def write_pretraining_images(out: Path | str, donors: Sequence[str] = OPEN_DONORS, per_donor: int = 8,
                             spacing_mm: float = 2.0, seed: int = 0,
                             appearance: Appearance = VARIED_T1_APPEARANCE) -> list[Path]:
    """Write ``per_donor`` unlabelled images of each donor, each drawn with ``appearance`` under a random smooth
    deformation (``gvsl.sample_data.random_warp``); returns the paths."""
    donors = [checked_donor(d) for d in donors]
    out = Path(out) / "images"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, donor in enumerate(donors):
        tissues = donor_tissues(donor)
        for k in range(per_donor):
            rng = np.random.default_rng([seed, n, k])
            image = synthesize(tissues, spacing_mm, rng, appearance, random_warp(tissues, rng))
            paths.append(out / f"{donor}-{k + 1:02d}.nii.gz")
            sitk.WriteImage(image, str(paths[-1]), useCompression=True)
    return paths
