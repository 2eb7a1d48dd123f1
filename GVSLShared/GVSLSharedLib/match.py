"""Inspect matches in the scene: inputs for ``gvsl match``, its outputs, and the nodes that show a match.

``gvsl match FIXED MOVING [--checkpoint C] --out DIR`` runs in the background on
volumes written from the scene; this module reads DIR back into a
``MatchResult``-like object and builds the transform nodes, the warped moving
volume and a checkerboard. Only ``.transform`` (fixed → moving, LPS),
``.warped`` and ``.metrics`` of a result are used. The probe's
feature-similarity map comes from ``similarity_job.py`` in its own process.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import SimpleITK as sitk
import slicer
import vtk

from .jobs import Job
from .runs import BackgroundProcess, gvsl_command
from .similarity_job import SIMILARITY_NAME
from .transforms import add_match_transform_nodes, show_transform
from .volumes import (
    add_volume_node,
    flip_lps_ras,
    image_from_volume_node,
    update_volume_node_from_image,
    write_volume_node,
)

# Files of a ``gvsl match --out DIR`` folder that the module reads (gvsl.match.outputs; a test checks them).
TRANSFORM_NAME = "transform.h5"  # fixed -> moving, LPS, a composite (affine after displacement field)
NETWORK_TRANSFORM_NAME = "transform_network.h5"  # with refinement: the network's answer alone, as TRANSFORM_NAME
WARPED_NAME = "moving_warped.nii.gz"  # the moving volume resampled into the fixed grid
METRICS_NAME = "metrics.json"
PROPAGATED_LABELS_NAME = "labels_propagated.nii.gz"  # with --labels: the moving label map on the fixed grid
UNTRAINED_NAME = "untrained_network.pt"  # without --checkpoint: the network it used (gvsl.commands.match)


def write_match_inputs(fixed_node, moving_node, folder: os.PathLike) -> tuple[Path, Path]:
    """Write the fixed and moving volumes (their own geometry, LPS files) for ``gvsl match``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for role, node in (("fixed", fixed_node), ("moving", moving_node)):
        path = folder / f"{role}.nrrd"
        write_volume_node(node, path, f"{role} volume")
        paths.append(path)
    return paths[0], paths[1]


# The module's choice of initial alignment that leaves it to the checkpoint (the rule it was trained with).
AS_TRAINED = "as trained"


def _match_arguments(fixed_path, moving_path, checkpoint, out_dir, device, initial_alignment=AS_TRAINED) -> list[str]:
    alignment = [] if initial_alignment in (None, AS_TRAINED) else ["--initial-alignment", initial_alignment]
    network = ["--checkpoint", str(checkpoint)] if checkpoint else []
    return [str(fixed_path), str(moving_path), *network, "--out", str(out_dir), "--device", device, *alignment]


def match_command(fixed_path: os.PathLike, moving_path: os.PathLike, checkpoint: Optional[os.PathLike],
                  out_dir: os.PathLike, device: str = "cpu", moving_labels: Optional[os.PathLike] = None,
                  refine: Optional[int] = None, initial_alignment: str = AS_TRAINED) -> list[str]:
    """The ``gvsl match`` command line (run with Slicer's Python) on a torch ``device`` (cpu, cuda, cuda:N, mps);
    ``checkpoint`` None: an untrained network starts the match and the refinement on the pair carries it;
    ``moving_labels``: a label map on the moving volume, carried onto the fixed grid (``PROPAGATED_LABELS_NAME``);
    ``refine``: the most refinement steps per stage (None: the backend's default; 0: the network alone);
    ``initial_alignment``: "centres-of-mass", "physical" or ``AS_TRAINED``."""
    labels = ["--labels", str(moving_labels)] if moving_labels else []
    steps = [] if refine is None else ["--refine", str(int(refine))]
    return gvsl_command("match", *_match_arguments(fixed_path, moving_path, checkpoint, out_dir, device,
                                                   initial_alignment), *labels, *steps)


def start_match(fixed_node, moving_node, checkpoint: Optional[os.PathLike], folder: os.PathLike,
                device: str = "auto", refine: Optional[int] = None, initial_alignment: str = AS_TRAINED,
                moving_labels: Optional[os.PathLike] = None) -> Job:
    """``gvsl match`` on two volume nodes in the background, its inputs, log and outputs in ``folder``; returns the
    job with ``outDir`` (the output folder) and ``inputs`` (fixed path, moving path, the network's checkpoint, device,
    initial alignment: what ``similarity_command`` needs; without ``checkpoint``, the untrained network ``gvsl match``
    writes into ``outDir``). ``device`` "auto" lets the backend pick CUDA, then Apple MPS, then the CPU; ``refine``,
    ``initial_alignment`` and ``moving_labels`` as for ``match_command``."""
    folder = Path(folder)
    fixed_path, moving_path = write_match_inputs(fixed_node, moving_node, folder)
    out_dir = folder / "out"
    command = match_command(fixed_path, moving_path, checkpoint, out_dir, device or "auto", moving_labels, refine,
                            initial_alignment)
    inputs = (fixed_path, moving_path, checkpoint or out_dir / UNTRAINED_NAME, device or "auto", initial_alignment)
    return Job(BackgroundProcess(command, folder / "match.log"), folder, outDir=out_dir, inputs=inputs)


def similarity_command(fixed_path: os.PathLike, moving_path: os.PathLike, checkpoint: os.PathLike,
                       out_dir: os.PathLike, device: str, point_fixed_ras, initial_alignment: str = AS_TRAINED
                       ) -> list[str]:
    """The similarity job's command line (same inputs as ``match_command``) for one fixed RAS point. It needs the
    network's features only, so it skips the refinement."""
    job = Path(__file__).with_name("similarity_job.py")
    point_lps = flip_lps_ras(point_fixed_ras)
    return [sys.executable, str(job), *_match_arguments(fixed_path, moving_path, checkpoint, out_dir, device,
                                                        initial_alignment),
            "--refine", "0", "--point-lps", *(repr(float(c)) for c in point_lps)]


def load_similarity(out_dir: os.PathLike) -> sitk.Image:
    return sitk.ReadImage(str(Path(out_dir) / SIMILARITY_NAME))


def load_match_outputs(out_dir: os.PathLike) -> SimpleNamespace:
    """The ``transform``, ``warped`` and ``metrics`` that ``gvsl match`` wrote to ``out_dir``, and
    ``network_transform`` (the network's answer before refinement; None without refinement)."""
    out_dir = Path(out_dir)
    metrics_path = out_dir / METRICS_NAME
    network_path = out_dir / NETWORK_TRANSFORM_NAME
    return SimpleNamespace(
        transform=sitk.ReadTransform(str(out_dir / TRANSFORM_NAME)),
        network_transform=sitk.ReadTransform(str(network_path)) if network_path.exists() else None,
        warped=sitk.ReadImage(str(out_dir / WARPED_NAME)),
        metrics=json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {})


def checkerboard(fixed: sitk.Image, warped: sitk.Image, squares: int = 8) -> sitk.Image:
    """Alternating boxes of the fixed and warped images (each rescaled to [0, 1]) on the fixed grid."""
    scaled = [sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0.0, 1.0) for image in (fixed, warped)]
    scaled[1].CopyInformation(scaled[0])
    return sitk.CheckerBoard(scaled[0], scaled[1], [squares] * 3)


def show_match(scene, result, fixed_node, name: str = "GVSL match") -> dict:
    """Nodes that show ``result`` against ``fixed_node``: transform hierarchy, warped volume, checkerboard.

    Returns ``transforms`` (outermost first; the last is the output, fixed → moving), ``warped`` and
    ``checkerboard`` (volume nodes on the fixed grid). The transform is displayed as a grid in slice views and
    glyphs in 3D over the fixed volume.
    """
    transforms = add_match_transform_nodes(scene, result.transform, name)
    show_transform(scene, transforms[-1], region_node=fixed_node)
    fixed = image_from_volume_node(fixed_node)
    warped = add_volume_node(scene, result.warped, f"{name} warped moving")
    board = add_volume_node(scene, checkerboard(fixed, result.warped), f"{name} checkerboard")
    return {"transforms": transforms, "warped": warped, "checkerboard": board}


def show_overlay(scene, image: sitk.Image, name: str, color_node_id: str = "vtkMRMLColorTableNodeRainbow"):
    """Put ``image`` (e.g. a similarity map in [-1, 1] on the moving grid) in the scene as a colour overlay.

    Reuses the volume called ``name`` if there is one; shows 0..1 in colour. Returns the node.
    """
    node = scene.GetFirstNodeByName(name)
    if node is None:
        node = add_volume_node(scene, image, name)
    else:
        update_volume_node_from_image(node, image)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    return node


def propagate_segmentation(scene, segmentation_node, moving_node, fixed_node, transform_fixed_to_moving_lps,
                           name: str = "GVSL propagated segmentation"):
    """A new segmentation on the fixed volume's grid: each segment of ``segmentation_node`` (drawn on the moving
    volume) carried through the match by partial volumes (``gvsl.carry_labels``, as ``gvsl match --labels``), with
    its name and colour; closed surfaces are created.

    Segments are carried one at a time, so overlapping segments stay overlapping.
    """
    from gvsl.carry_labels import carry_labels

    logic = slicer.vtkSlicerSegmentationsModuleLogic
    source = segmentation_node.GetSegmentation()
    fixed = image_from_volume_node(fixed_node)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    output.SetReferenceImageGeometryParameterFromVolumeNode(fixed_node)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} (working labelmap)")
    try:
        for index in range(source.GetNumberOfSegments()):
            segment_id = source.GetNthSegmentID(index)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, moving_node):
                raise RuntimeError(f"cannot export segment {source.GetSegment(segment_id).GetName()!r}")
            labels = image_from_volume_node(labelmap)
            update_volume_node_from_image(labelmap, carry_labels(labels, fixed, transform_fixed_to_moving_lps))
            before = output.GetSegmentation().GetNumberOfSegments()
            logic.ImportLabelmapToSegmentationNode(labelmap, output)
            if output.GetSegmentation().GetNumberOfSegments() == before:  # nothing landed on the fixed grid
                continue
            carried = output.GetSegmentation().GetNthSegment(before)
            carried.SetName(source.GetSegment(segment_id).GetName())
            carried.SetColor(source.GetSegment(segment_id).GetColor())
    finally:
        scene.RemoveNode(labelmap)
    output.CreateDefaultDisplayNodes()
    output.CreateClosedSurfaceRepresentation()
    return output


def describe_metrics(metrics: dict) -> str:
    """The metrics of ``gvsl match`` for the module's match view, saying which numbers come from the network and
    which from the refinement: with refinement, the final answer's first (the network's affine and a displacement
    optimised on these two scans), then the network's own (``metrics["network"]``: what the pre-training learned);
    without, the network's alone."""
    final = {key: value for key, value in metrics.items() if key != "network"}
    network = metrics.get("network")
    if not isinstance(network, dict):
        return f"Network alone (no refinement):\n{format_metrics(final)}"
    return (f"After refinement on the pair:\n{format_metrics(final)}\n\n"
            f"Network alone, before refinement (what the pre-training learned):\n{format_metrics(network)}")


def format_metrics(metrics: dict, prefix: str = "") -> str:
    """One line per metric, numbers with four significant digits (the file also holds e.g. paths); a nested group
    (the network's own metrics before refinement) follows, each name prefixed with the group's."""
    lines, groups = [], []
    for key, value in metrics.items():
        if isinstance(value, dict):
            groups.append(format_metrics(value, f"{prefix}{key} "))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"{prefix}{key}: {value:.4g}")
        else:
            lines.append(f"{prefix}{key}: {value}")
    return "\n".join(lines + groups)
