"""Label tables: the names and colours of the integer values of a label map.

One format, used by ``gvsl finetune`` (read), ``gvsl segment`` (written next to
the label map) and the Slicer module (segment names and colours)::

    {"labels": [{"value": 1, "name": "grey matter", "color": [0.9, 0.6, 0.5]}, ...]}

``value``: a positive integer of the label map (0 is background and is not
listed); ``name``: text; ``color``: red, green, blue as floats in [0, 1].
Optionally, terminology (what DICOM SEG and Slicer's segments call the
segmented property category and type): ``"category"`` and ``"type"``, both or
neither, each a code ``{"scheme": "SCT", "value": "389081007", "meaning":
"Gray Matter"}`` (scheme: a DICOM coding scheme designator, SCT for SNOMED
CT). Entries without them are described by ``GENERIC_CATEGORY`` and
``GENERIC_TYPE`` where a code is needed.

An nnU-Net ``dataset.json`` is read too (v2 ``{"labels": {"background": 0,
"liver": 1}}`` and v1 ``{"labels": {"0": "background", "1": "liver"}}``).
"""
from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from gvsl.atomic_files import write_text_atomically

LabelTable = dict[str, list[dict[str, Any]]]
Code = dict[str, str]  # {"scheme", "value", "meaning"}: one coded concept (DICOM Code Sequence item)
TERMINOLOGY_KEYS = ("category", "type")
CODE_KEYS = ("scheme", "value", "meaning")
# Where a table gives no codes: "Anatomical Structure" (SNOMED CT), the category of DICOM CID 7150 that fits any
# structure a person labels, used as the type too.
GENERIC_CATEGORY: Code = {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"}
GENERIC_TYPE: Code = {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"}
SUFFIX = ".labels.json"
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def default_color(value: int) -> list[float]:
    """A distinct, deterministic colour for ``value`` (golden-angle hues), RGB in [0, 1]."""
    hue = (value * 0.381966) % 1.0
    return [round(c, 4) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.9)]


def make_label_table(values: Iterable[int], names: Optional[Mapping[int, str]] = None,
                     colors: Optional[Mapping[int, Iterable[float]]] = None,
                     terminology: Optional[Mapping[int, Mapping[str, Code]]] = None) -> LabelTable:
    """A table for the positive ``values`` (sorted); missing names are the values ("1"), missing colours default.

    ``terminology``: value -> ``{"category": Code, "type": Code}`` for the values that have codes.
    """
    names, colors, terminology = names or {}, colors or {}, terminology or {}
    return check_label_table({"labels": [
        {"value": v, "name": str(names.get(v, v)), "color": [float(c) for c in colors.get(v, default_color(v))],
         **terminology.get(v, {})}
        for v in sorted({int(v) for v in values if int(v) != 0})]})


def check_code(code: Any, source: str) -> Code:
    """``code`` as ``{"scheme", "value", "meaning"}`` (non-empty strings); ValueError naming ``source`` otherwise."""
    if not isinstance(code, Mapping) or not all(isinstance(code.get(k), str) and code[k].strip() for k in CODE_KEYS):
        raise ValueError(f'{source}: a code needs non-empty "scheme", "value" and "meaning" strings, got {code!r}')
    return {k: code[k].strip() for k in CODE_KEYS}


def terminology_codes(entry: Mapping[str, Any]) -> tuple[Code, Code]:
    """(category, type) of a checked table entry: its own codes, else ``GENERIC_CATEGORY``, ``GENERIC_TYPE``."""
    if "category" in entry:
        return entry["category"], entry["type"]
    return GENERIC_CATEGORY, GENERIC_TYPE


def check_label_table(table: Any, source: str = "label table") -> LabelTable:
    """``table`` normalised (values sorted, ints/floats cast); ValueError naming ``source`` when malformed."""
    if not isinstance(table, Mapping) or not isinstance(table.get("labels"), list):
        raise ValueError(f'{source}: expected {{"labels": [{{"value", "name", "color"}}, ...]}}')
    out = []
    for item in table["labels"]:
        try:
            value, name = int(item["value"]), str(item.get("name", item["value"]))
            color = [float(c) for c in item.get("color", default_color(value))]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: bad entry {item!r} ({exc})") from exc
        if value <= 0 or len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"{source}: entry {item!r} needs a value > 0 and a colour of three floats in [0, 1]")
        given = [key for key in TERMINOLOGY_KEYS if key in item]
        if given and len(given) != len(TERMINOLOGY_KEYS):
            raise ValueError(f'{source}: entry {name!r} has "{given[0]}" without '
                             f'"{next(k for k in TERMINOLOGY_KEYS if k not in given)}" (give both codes or neither)')
        codes = {key: check_code(item[key], f"{source}: {key} of {name!r}") for key in given}
        out.append({"value": value, "name": name, "color": color, **codes})
    values = [e["value"] for e in out]
    if len(set(values)) != len(values):
        raise ValueError(f"{source}: repeated label values {sorted(values)}")
    return {"labels": sorted(out, key=lambda e: e["value"])}


def from_nnunet(dataset: Mapping[str, Any], source: str = "dataset.json") -> LabelTable:
    """The table of an nnU-Net ``dataset.json`` (v2: name -> value; v1: "value" -> name); regions are refused."""
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping):
        raise ValueError(f"{source} has no 'labels' mapping")
    names: dict[int, str] = {}
    for key, item in labels.items():
        if isinstance(item, (list, tuple)):
            raise ValueError(f"{source}: region-based label {key!r} is not supported (use one value per structure)")
        try:
            v1 = str(key).strip().isdigit()  # v1: "1": "liver"; v2: "liver": 1
            value, name = (int(key), str(item)) if v1 else (int(item), str(key))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: bad label entry {key!r}: {item!r}") from exc
        names[value] = name
    return make_label_table(names, names)


def read_label_table(path: str | os.PathLike) -> LabelTable:
    """Read our label table or an nnU-Net ``dataset.json``; ValueError naming ``path`` when unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read label table {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"label table {path} is not valid JSON: {exc}") from exc
    if isinstance(data, Mapping) and isinstance(data.get("labels"), Mapping):
        return from_nnunet(data, str(path))
    return check_label_table(data, str(path))


def write_label_table(table: LabelTable, path: str | os.PathLike) -> Path:
    """Write ``table`` as indented JSON, atomically."""
    return write_text_atomically(path, json.dumps(check_label_table(table), indent=2) + "\n")


def label_values(table: LabelTable) -> list[int]:
    """The positive values of ``table``, in order: class index c (1..n) of a model stands for ``values[c - 1]``."""
    return [e["value"] for e in table["labels"]]


def complete_label_table(table: LabelTable, values: Iterable[int]) -> LabelTable:
    """``table`` completed with default entries for ``values`` it lacks (named by their value); its own entries are
    kept whole (codes included)."""
    known = {e["value"] for e in table["labels"]}
    missing = make_label_table({int(v) for v in values} - known)
    return check_label_table({"labels": table["labels"] + missing["labels"]})


def sidecar_path(label_map: str | os.PathLike) -> Path:
    """Where the table of a label map file goes: ``seg.nii.gz`` -> ``seg.labels.json``."""
    path = Path(label_map)
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + SUFFIX)
