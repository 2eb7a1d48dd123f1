"""Labelled cases from the scene → the training format of ``gvsl finetune``, with the volumes' geometry kept.

A case is a (volume node, segmentation node) pair. Segments are matched across
cases by name: the first case fixes the label values (1, 2, ... in its segment
order) and colours, and every other case must have exactly the same segment
names. The export is an nnU-Net-style folder::

    imagesTr/CASE_0000.nrrd   the volume, its own geometry (LPS file)
    labelsTr/CASE.nrrd        the label map on exactly that grid
    labels.json               the label table {"labels": [{"value", "name", "color"}]}
    dataset.json              nnU-Net v2 description (names → values)

NRRD keeps the direction matrix exactly. Where segments overlap, the later
segment of the table wins (a label map holds one value per voxel).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import SimpleITK as sitk
import slicer
import vtk
from GVSLSharedLib.label_maps import color_table_node, label_table_path, working_nodes
from GVSLSharedLib.volumes import image_from_volume_node, write_volume_node

# Names of the export and of the label table format (gvsl.finetune.data, gvsl.labels; a test checks them).
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"
LABEL_TABLE_NAME = "labels.json"
NNUNET_DATASET_NAME = "dataset.json"
FILE_ENDING = ".nrrd"


@dataclass(frozen=True)
class TrainingCase:
    """One labelled case of the training table: a volume and the segmentation drawn on it."""

    volume_node: object
    segmentation_node: object

    @property
    def name(self) -> str:
        return self.volume_node.GetName()


def segment_names_and_colors(segmentation_node) -> list[tuple[str, tuple[float, float, float]]]:
    """(name, colour) of each segment, in the segmentation's order."""
    segmentation = segmentation_node.GetSegmentation()
    return [(segment.GetName(), tuple(segment.GetColor()))
            for segment in (segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments()))]


def label_table_for_cases(cases: Sequence[TrainingCase]) -> dict:
    """The label table shared by ``cases``: the first case's segments (values 1..n, its colours).

    Raises ValueError naming the case and the segment when the segment names differ between cases.
    """
    if not cases:
        raise ValueError("add at least one (volume, segmentation) case")
    first = cases[0]
    segments = segment_names_and_colors(first.segmentation_node)
    if not segments:
        raise ValueError(f"case {first.name!r}: the segmentation {first.segmentation_node.GetName()!r} has no segment")
    names = [name for name, _ in segments]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"case {first.name!r}: several segments are named {', '.join(map(repr, repeated))}; "
                         "segments are matched across cases by name, so rename them")
    for case in cases[1:]:
        other = [name for name, _ in segment_names_and_colors(case.segmentation_node)]
        missing = [n for n in names if n not in other]
        extra = [n for n in other if n not in names]
        if missing or extra:
            problems = ([f"has no segment {n!r}" for n in missing]
                        + [f"has a segment {n!r} that the first case {first.name!r} lacks" for n in extra])
            raise ValueError(f"case {case.name!r} {'; '.join(problems)} (segments are matched by name; the first "
                             f"case has {', '.join(map(repr, names))})")
    return {"labels": [{"value": value, "name": name, "color": [float(c) for c in color]}
                       for value, (name, color) in enumerate(segments, start=1)]}


def export_label_map(scene, segmentation_node, volume_node, table: dict) -> sitk.Image:
    """The label map (UInt8/UInt16, values of ``table`` by segment name) of a segmentation on exactly the volume's
    grid (LPS geometry of ``image_from_volume_node``)."""
    ids = vtk.vtkStringArray()
    segmentation = segmentation_node.GetSegmentation()
    for entry in table["labels"]:
        segment_id = segmentation.GetSegmentIdBySegmentName(entry["name"])
        if segment_id:
            ids.InsertNextValue(segment_id)
    with working_nodes(scene):
        colors = color_table_node(scene, table, f"{segmentation_node.GetName()} export labels")
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentation_node.GetName()} export")
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                colors):
            raise RuntimeError(f"cannot export the segmentation {segmentation_node.GetName()!r} on "
                               f"{volume_node.GetName()!r}")
        labels = image_from_volume_node(labelmap)
    reference = image_from_volume_node(volume_node)
    if labels.GetSize() != reference.GetSize():
        raise RuntimeError(f"the exported labels of {segmentation_node.GetName()!r} are {labels.GetSize()} voxels, "
                           f"the volume {reference.GetSize()}")
    pixel = sitk.sitkUInt8 if max(entry["value"] for entry in table["labels"]) <= 255 else sitk.sitkUInt16
    labels = sitk.Cast(labels, pixel)
    labels.CopyInformation(reference)  # the same grid; copied so that rounding cannot differ by a bit
    return labels


def write_label_table(table: dict, path: os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return path


def write_label_map(scene, segmentation_node, volume_node, path: os.PathLike, table: Optional[dict] = None
                    ) -> Path:
    """Write a segmentation as a label map on the volume's grid and its table next to it; returns the map's path.

    ``table`` defaults to the segmentation's own segments (values 1..n).
    """
    table = table or label_table_for_cases([TrainingCase(volume_node, segmentation_node)])
    path = Path(path)
    sitk.WriteImage(export_label_map(scene, segmentation_node, volume_node, table), str(path), useCompression=True)
    write_label_table(table, label_table_path(path))
    return path


def case_identifiers(cases: Sequence[TrainingCase]) -> list[str]:
    """File-name-safe, unique case identifiers from the volume names (``CT chest #2`` → ``CT-chest-2``)."""
    identifiers = []
    for number, case in enumerate(cases, start=1):
        identifier = re.sub(r"[^A-Za-z0-9-]+", "-", case.name).strip("-") or f"case-{number}"
        while identifier in identifiers:
            identifier = f"{identifier}-{number}"
        identifiers.append(identifier)
    return identifiers


def export_training_data(scene, cases: Sequence[TrainingCase], folder: os.PathLike) -> dict:
    """Write ``cases`` to ``folder`` in the training format (see the module doc); returns the label table.

    Raises ValueError (mismatched segment names, a volume under a transform, the same volume twice) naming the
    case.
    """
    table = label_table_for_cases(cases)
    volumes = [case.volume_node for case in cases]
    for case in cases:
        if volumes.count(case.volume_node) > 1:
            raise ValueError(f"case {case.name!r}: the volume is listed more than once")
    folder = Path(folder)
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (folder / LABELS_DIR).mkdir(parents=True, exist_ok=True)
    for case, identifier in zip(cases, case_identifiers(cases)):
        write_volume_node(case.volume_node, folder / IMAGES_DIR / f"{identifier}_0000{FILE_ENDING}",
                          f"volume of case {case.name!r}")
        labels = export_label_map(scene, case.segmentation_node, case.volume_node, table)
        sitk.WriteImage(labels, str(folder / LABELS_DIR / f"{identifier}{FILE_ENDING}"), useCompression=True)
    write_label_table(table, folder / LABEL_TABLE_NAME)
    dataset = {"channel_names": {"0": "image"},
               "labels": {"background": 0, **{entry["name"]: entry["value"] for entry in table["labels"]}},
               "numTraining": len(cases), "file_ending": FILE_ENDING}
    (folder / NNUNET_DATASET_NAME).write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return table
