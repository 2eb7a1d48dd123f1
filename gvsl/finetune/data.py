"""Finding labelled cases: nnU-Net folders, CSV/JSON lists of pairs, or the Slicer module's export.

Accepted DATA:

- an nnU-Net-style folder: ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` (any volume suffix; only
  channel 0000 is used), its label names from ``dataset.json``;
- a CSV file with columns ``image,label`` (header required; paths relative to the file) or a JSON file holding a
  list ``[{"image": ..., "label": ...}, ...]`` (or ``{"training": [...]}``, nnU-Net v1 style);
- a folder holding ``pairs.json`` (such a list) and ``labels.json`` (a label table): what the Slicer module exports.

Label tables found with the data: ``labels.json`` next to the list or in the folder, else ``dataset.json``.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gvsl.io import is_volume_file

PAIRS_NAME = "pairs.json"
LABELS_NAME = "labels.json"
NNUNET_DATASET = "dataset.json"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One labelled case: a readable ``name``, the ``image`` file and its ``label`` map file."""

    name: str
    image: Path
    label: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _nnunet_cases(root: Path) -> list[Case]:
    labels = {_stem(p): p for p in sorted((root / "labelsTr").iterdir()) if is_volume_file(p)}
    cases, missing = [], []
    for image in sorted((root / "imagesTr").iterdir()):
        match = _CHANNEL.match(_stem(image)) if is_volume_file(image) else None
        if match is None or match["channel"] != "0000":
            continue
        if match["case"] in labels:
            cases.append(Case(match["case"], image, labels[match["case"]]))
        else:
            missing.append(match["case"])
    if missing:
        raise ValueError(f"{root}: no label in labelsTr for case(s) {', '.join(missing[:5])}")
    return cases


def _listed_cases(path: Path) -> list[Case]:
    base = path.parent
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
            rows = rows.get("training", rows) if isinstance(rows, dict) else rows
    except (OSError, json.JSONDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read the list of pairs {path}: {exc}") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("image") and r.get("label")
                                             for r in rows):
        raise ValueError(f"{path}: expected a list of pairs with 'image' and 'label' entries (CSV: a header "
                         "image,label)")
    cases = []
    for n, row in enumerate(rows):
        image, label = (base / str(row[k]).strip() for k in ("image", "label"))
        cases.append(Case(str(row.get("name") or _stem(image) or n), image, label))
    return cases


def find_cases(data: str | Path) -> tuple[list[Case], Optional[Path]]:
    """The labelled cases in ``data`` and the label table file found with them (or None).

    Raises ValueError when nothing is found or a listed file is missing (naming the case).
    """
    data = Path(data)
    if data.is_dir() and (data / "imagesTr").is_dir() and (data / "labelsTr").is_dir():
        cases, table = _nnunet_cases(data), data / NNUNET_DATASET
        table = data / LABELS_NAME if (data / LABELS_NAME).is_file() else table
    elif data.is_dir() and (data / PAIRS_NAME).is_file():
        cases, table = _listed_cases(data / PAIRS_NAME), data / LABELS_NAME
    elif data.is_file() and data.suffix.lower() in (".csv", ".json"):
        cases = _listed_cases(data)
        table = data.parent / LABELS_NAME
    else:
        raise ValueError(f"{data}: expected an nnU-Net folder (imagesTr/, labelsTr/), a CSV/JSON list of image/label "
                         f"pairs, or a folder with {PAIRS_NAME}")
    if not cases:
        raise ValueError(f"{data}: no labelled case found")
    for case in cases:
        for what, path in (("image", case.image), ("label", case.label)):
            if not path.is_file():
                raise ValueError(f"case {case.name}: {what} file {path} does not exist")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        cases = [Case(f"{n}-{i}", c.image, c.label) for i, (n, c) in enumerate(zip(names, cases))]
    return cases, table if table.is_file() else None


def find_split_cases(data: str | Path, val_data: Optional[str | Path]
                     ) -> tuple[list[Case], list[Case], Optional[Path]]:
    """(training cases, validation cases, the label table file found with ``data``): the cases of ``data`` and, when
    given, of ``val_data`` (used only for validation; empty list otherwise).

    A validation case named as a training case is renamed ``val-NAME`` (``val-NAME-2``, ... if that is taken too), so
    both can share one cache; one whose image file is a training case's is refused (ValueError naming both), as it
    would validate on training data.
    """
    cases, table = find_cases(data)
    if val_data is None:
        return cases, [], table
    images = {c.image.resolve(): c.name for c in cases}
    taken = {c.name for c in cases}
    val_cases = []
    for case in find_cases(val_data)[0]:
        if case.image.resolve() in images:
            raise ValueError(f"validation case {case.name} ({case.image}) is also training case "
                             f"{images[case.image.resolve()]} in {data}: --val-data must hold other cases")
        name, n = case.name, 1
        while name in taken:
            n += 1
            name = f"val-{case.name}" if n == 2 else f"val-{case.name}-{n - 1}"
        taken.add(name)
        val_cases.append(Case(name, case.image, case.label))
    return cases, val_cases, table
