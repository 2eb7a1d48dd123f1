"""Label maps with a label table ↔ segmentation nodes that show in every view, for both modules.

A label table (``gvsl.labels``: ``{"labels": [{"value", "name", "color"}]}``) is written beside its map
(``seg.nrrd`` → ``seg.labels.json``). ``import_label_map`` gives a segmentation one segment per entry (its name and
colour; structures the map does not contain stay as empty segments), the input volume as reference geometry, a
closed-surface representation (the 3D view) and a place next to the input volume in the subject hierarchy; entries
with codes give their segments that terminology (``terminology``).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
import slicer

from .terminology import terminology_entry
from .volumes import add_volume_node, image_from_volume_node

LABEL_TABLE_SUFFIX = ".labels.json"  # a label map's table: seg.nrrd -> seg.labels.json (gvsl.labels; a test checks)


def label_table_path(label_map_path: os.PathLike) -> Path:
    """Where a label map's table is (``seg.nrrd`` or ``seg.nii.gz`` → ``seg.labels.json``), as ``gvsl`` writes it."""
    path = Path(label_map_path)
    stem = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", "", path.name, flags=re.IGNORECASE)
    return path.with_name(stem + LABEL_TABLE_SUFFIX)


@contextmanager
def working_nodes(scene) -> Iterator[None]:
    """Remove the nodes added to ``scene`` inside the block (working label maps with the display and colour nodes
    Slicer adds for them); singletons such as the subject hierarchy stay."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before and not node.GetSingletonTag():
                scene.RemoveNode(node)


def color_table_node(scene, table: dict, name: str = "GVSL labels"):
    """A colour table node holding the label table (index = value, with its name and colour; 0 is background).

    Slicer uses it both ways: segments named like an entry are exported with its value, and a label map imported
    with it gives segments with its names and colours.
    """
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(max(entry["value"] for entry in table["labels"]) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for entry in table["labels"]:
        node.SetColor(entry["value"], entry["name"], *entry["color"], 1.0)
    return node


def read_label_map(path: os.PathLike, table_path: Optional[os.PathLike] = None) -> tuple[sitk.Image, dict]:
    """A label map file and its label table (by default the one written next to it, ``label_table_path``)."""
    table_path = Path(table_path or label_table_path(path))
    if not table_path.exists():
        raise ValueError(f"{path} has no label table ({table_path.name})")
    return sitk.ReadImage(str(path)), json.loads(table_path.read_text(encoding="utf-8"))


def on_reference_grid(label_image: sitk.Image, reference: sitk.Image, tolerance: float = 1e-4) -> sitk.Image:
    """``label_image`` with exactly ``reference``'s geometry when it is the same grid up to ``tolerance`` (mm, and
    for the direction cosines): NIfTI files store geometry in float32, which moves the grid by ~1e-6 mm."""
    same = (label_image.GetSize() == reference.GetSize()
            and all(np.allclose(getattr(label_image, f"Get{part}")(), getattr(reference, f"Get{part}")(), rtol=0,
                                atol=tolerance) for part in ("Origin", "Spacing", "Direction")))
    if not same:
        return label_image
    snapped = sitk.Image(label_image)
    snapped.CopyInformation(reference)
    return snapped


def place_next_to(scene, node, reference_node) -> None:
    """Put ``node`` under the same subject hierarchy item (patient, study or folder) as ``reference_node`` (the
    scene when that has none). Slicer gives every new node an item; one is created where it has not (yet)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    parent = hierarchy.GetItemParent(reference_item) if reference_item else hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


def import_label_map(scene, label_image: sitk.Image, table: dict, reference_volume_node, output_node=None,
                     name: Optional[str] = None):
    """Fill ``output_node`` (a new segmentation node called ``name`` when None; emptied otherwise) from a label map
    (LPS geometry) with the segment names and colours of ``table``; returns the node.

    The reference geometry is the input volume's, so editing continues on its grid; a closed surface is created.
    """
    values = set(np.unique(sitk.GetArrayViewFromImage(label_image)).tolist()) - {0}
    unnamed = sorted(values - {entry["value"] for entry in table["labels"]})
    if unnamed:
        raise ValueError(f"the label map holds values {unnamed} that its label table does not name")
    label_image = on_reference_grid(label_image, image_from_volume_node(reference_volume_node))
    if output_node is None:
        output_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                              name or f"{reference_volume_node.GetName()} segmentation")
    output_node.GetSegmentation().RemoveAllSegments()
    output_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    with working_nodes(scene):
        colors = color_table_node(scene, table, f"{output_node.GetName()} labels")
        labelmap = add_volume_node(scene, label_image, f"{output_node.GetName()} labelmap",
                                   "vtkMRMLLabelMapVolumeNode")
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, output_node):
            raise RuntimeError(f"cannot import the label map into {output_node.GetName()!r}")
    segmentation = output_node.GetSegmentation()
    for entry in table["labels"]:  # colours again: the colour table holds them as 8-bit values
        segment_id = segmentation.GetSegmentIdBySegmentName(entry["name"])
        if segment_id:
            segmentation.GetSegment(segment_id).SetColor(entry["color"])
        else:
            segment_id = segmentation.AddEmptySegment("", entry["name"], entry["color"])
        terminology = terminology_entry(entry)
        if terminology:
            segmentation.GetSegment(segment_id).SetTerminology(terminology)
    output_node.CreateDefaultDisplayNodes()
    output_node.CreateClosedSurfaceRepresentation()
    place_next_to(scene, output_node, reference_volume_node)
    return output_node
