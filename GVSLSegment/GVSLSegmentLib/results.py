"""Label maps from ``gvsl segment`` or ``gvsl match --labels`` → segmentation nodes that show in every view.

The segmentation gets one segment per entry of the label table (its name and
colour; structures the map does not contain stay as empty segments), the
input volume as reference geometry, a closed-surface representation (the 3D
view) and a place next to the input volume in the subject hierarchy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import SimpleITK as sitk
import slicer
from GVSLSharedLib.runs import BackgroundProcess
from GVSLSharedLib.volumes import add_volume_node, image_from_volume_node, write_volume_node

from .finetuning import segment_command
from .training_data import color_table_node, label_table_path, working_nodes


def start_segmentation(volume_node, model: os.PathLike, folder: os.PathLike, device: str = "auto") -> SimpleNamespace:
    """``gvsl segment`` on a volume node in the background, its input, log and output in ``folder``; returns the job:
    ``process``, ``labels`` (the label map it writes) and ``table`` (that map's label table)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = folder / "input.nrrd", folder / "segmentation.nrrd"
    write_volume_node(volume_node, image, "input volume")
    process = BackgroundProcess(segment_command(image, model, labels, device or "auto"), folder / "segment.log")
    return SimpleNamespace(process=process, labels=labels, table=label_table_path(labels))


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
            segmentation.AddEmptySegment("", entry["name"], entry["color"])
    output_node.CreateDefaultDisplayNodes()
    output_node.CreateClosedSurfaceRepresentation()
    place_next_to(scene, output_node, reference_volume_node)
    return output_node
