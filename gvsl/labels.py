"""Label tables: the names and colours of the integer values of a label map.

One format, used by ``gvsl finetune`` (read), ``gvsl segment`` (written next to
the label map) and the Slicer module (segment names and colours)::

    {"labels": [{"value": 1, "name": "grey matter", "color": [0.9, 0.6, 0.5]}, ...]}

``value``: a positive integer of the label map (0 is background and is not
listed); ``name``: text; ``color``: red, green, blue as floats in [0, 1]. An
nnU-Net ``dataset.json`` is read too (v2 ``{"labels": {"background": 0,
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
SUFFIX = ".labels.json"
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def default_color(value: int) -> list[float]:
    """A distinct, deterministic colour for ``value`` (golden-angle hues), RGB in [0, 1]."""
    hue = (value * 0.381966) % 1.0
    return [round(c, 4) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.9)]


def make_label_table(values: Iterable[int], names: Optional[Mapping[int, str]] = None,
                     colors: Optional[Mapping[int, Iterable[float]]] = None) -> LabelTable:
    """A table for the positive ``values`` (sorted); missing names are the values ("1"), missing colours default."""
    names, colors = names or {}, colors or {}
    return {"labels": [{"value": v, "name": str(names.get(v, v)), "color": [float(c) for c in
                                                                          colors.get(v, default_color(v))]}
                       for v in sorted({int(v) for v in values if int(v) != 0})]}


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
        out.append({"value": value, "name": name, "color": color})
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
    """``table`` completed with default entries for ``values`` it lacks (named by their value)."""
    known = {e["value"]: e for e in table["labels"]}
    names = {v: e["name"] for v, e in known.items()}
    colors = {v: e["color"] for v, e in known.items()}
    return make_label_table(set(known) | {int(v) for v in values}, names, colors)


def sidecar_path(label_map: str | os.PathLike) -> Path:
    """Where the table of a label map file goes: ``seg.nii.gz`` -> ``seg.labels.json``."""
    path = Path(label_map)
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + SUFFIX)
