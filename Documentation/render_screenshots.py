"""Render the README's pictures with Slicer's own displayable managers, offscreen, from real GVSL results.

Runs outside Slicer, on the ``slicer-core`` wheel through ``trame-slicer`` (``slicer-layer-dm`` 2.0 pins
``slicer-core`` 5.11, the project's test venv has 5.13: use a separate venv)::

    python3 -m venv /tmp/render-venv
    /tmp/render-venv/bin/pip install trame-slicer==2.0.0 slicer-layer-dm==2.0.0 SimpleITK
    /tmp/render-venv/bin/python Documentation/render_screenshots.py \\
        --fixed FIXED --moving MOVING --match-dir MATCH_OUT \\
        --segment-image IMAGE --segment-labels LABELS.nii.gz --out Documentation/Screenshots

Inputs are result files only (no torch here): FIXED and MOVING are the scans given to
``gvsl match FIXED MOVING --checkpoint C --out MATCH_OUT`` (a volume file, or one file of a DICOM series, read by
Slicer), MATCH_OUT is that command's output folder, LABELS is the label map of ``gvsl segment IMAGE --model RUN
--out LABELS`` (its label table ``LABELS.labels.json`` is read from beside it). The results are put in the scene by
the modules' own logic (``GVSLSharedLib``, ``GVSLPretrainLib``, ``GVSLSegmentLib``), so the pictures show the nodes
the modules make.
``Screenshots/SOURCES.md`` says how the committed pictures' inputs were made.

Writes ``matches.png`` (fixed axial slice with the deformation grid and the fixed points | moving axial slice
with the matched points), ``checkerboard.png`` (warped moving and fixed, alternating boxes) and, when the
segmentation inputs are given, ``segmentation_3d.png`` (the segments' closed surfaces in 3D: all | all but the
first).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import slicer
import vtk
from trame_slicer.core import SlicerApp
from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "GVSLShared"), str(ROOT / "GVSLPretrain"), str(ROOT / "GVSLSegment")]  # Qt-free logic
from GVSLPretrainLib import probe  # noqa: E402
from GVSLSharedLib import label_maps, match  # noqa: E402

SIZE = (640, 640)  # pixels of one view
POINT_COLORS = {"fixed": (1.0, 0.9, 0.1), "matched": (0.1, 0.9, 1.0)}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed", required=True, help="fixed scan given to gvsl match (file, or a DICOM file)")
    parser.add_argument("--moving", required=True, help="moving scan given to gvsl match (file, or a DICOM file)")
    parser.add_argument("--match-dir", required=True, help="output folder of gvsl match (transform.h5, ...)")
    parser.add_argument("--segment-image", help="volume given to gvsl segment (with --segment-labels: render "
                                                "segmentation_3d.png too)")
    parser.add_argument("--segment-labels", help="label map written by gvsl segment")
    parser.add_argument("--points", type=int, default=6, help="fixed points placed on the axial slice (default 6)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "Screenshots"), help="output folder")
    return parser.parse_args(argv)


class Renderer:
    """A Slicer scene with offscreen views; ``capture`` renders a view to an RGB array."""

    def __init__(self) -> None:
        self.app = SlicerApp()
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        self.scene = self.app.scene

    def slice_view(self, name: str):
        view = self.app.view_manager.create_view(ViewLayoutDefinition.axial_view(name))
        view.render_window().SetSize(*SIZE)
        return view

    def threed_view(self):
        view = self.app.view_manager.create_view(ViewLayoutDefinition.threed_view())
        view.render_window().SetSize(*SIZE)
        return view

    def load_volume(self, path: str, name: str, labelmap: bool = False):
        """Read with Slicer's volume reader: a volume file, or one file of a DICOM series (reads the series)."""
        node = self.app.volumes_logic.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
        if node is None:
            raise ValueError(f"Slicer cannot read {path} as a volume")
        if not labelmap:
            set_window(node)
        return node

    @staticmethod
    def capture(view) -> np.ndarray:
        view.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(view.render_window())
        grab.ReadFrontBufferOff()
        grab.Update()
        return vtk_to_rgb(grab.GetOutput())


def vtk_to_rgb(image: vtk.vtkImageData) -> np.ndarray:
    """(H, W, 3) uint8, top row first, from a vtkWindowToImageFilter output (bottom row first)."""
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3]
    return np.ascontiguousarray(pixels[::-1])


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write ``rgb``; RuntimeError if it shows nothing but the background (constant along each row)."""
    content = np.abs(rgb.astype(int) - np.median(rgb, axis=1, keepdims=True)).max(axis=2) > 30
    if content.mean() < 0.01:
        raise RuntimeError(f"{path}: the rendered frame is blank")
    image = vtk.vtkImageData()
    height, width, _ = rgb.shape
    image.SetDimensions(width, height, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(rgb[::-1].reshape(-1, 3).copy(), deep=True))
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    print(f"wrote {path}")


def show_volume(view, volume_node) -> None:
    """``volume_node`` alone in a slice view, fitted to it."""
    view.set_background_volume_id(volume_node.GetID())
    view.set_foreground_volume_id(None)
    view.fit_view_to_content()


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def place_fixed_points(points, fixed_node, slice_ras_z: float, count: int) -> None:
    """``count`` points at axial height ``slice_ras_z`` (nearest voxel plane), spread around the bright part of
    the slice, each two thirds of the way from its centre to its edge."""
    to_ras = ijk_to_ras(fixed_node)
    k = int(round((np.linalg.inv(to_ras) @ [*to_ras[:2, 3], slice_ras_z, 1.0])[2]))
    plane = slicer.util.arrayFromVolume(fixed_node)[k]
    j, i = np.nonzero(plane > np.percentile(plane, 75))
    angles = np.arctan2(j - j.mean(), i - i.mean())
    for n, target in enumerate(np.linspace(-np.pi, np.pi, count, endpoint=False)):
        sector = np.abs(np.angle(np.exp(1j * (angles - target)))) < np.pi / count
        radius = np.hypot(j[sector] - j.mean(), i[sector] - i.mean())
        pick = np.argsort(radius)[len(radius) * 2 // 3]
        point = to_ras @ [i[sector][pick], j[sector][pick], k, 1.0]
        points.AddControlPoint(*point[:3], f"P{n + 1}")


def set_window(volume_node, percentiles=(1.0, 99.5)) -> None:
    """Window the volume's display on robust percentiles of its voxels (as a reader would, by eye)."""
    low, high = np.percentile(slicer.util.arrayFromVolume(volume_node), percentiles)
    display = volume_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(low), float(high))


def style_points(points, color, view) -> None:
    points.CreateDefaultDisplayNodes()
    display = points.GetDisplayNode()
    display.SetViewNodeIDs([view.get_view_node_id()])
    display.SetSelectedColor(color)
    display.SetColor(color)
    display.SetGlyphScale(3.0)
    display.SetTextScale(3.5)
    display.SetSliceProjection(True)
    display.SetSliceProjectionColor(color)
    display.SetSliceProjectionOpacity(1.0)


def render_matches(renderer: Renderer, args: argparse.Namespace, out: Path) -> None:
    scene = renderer.scene
    fixed = renderer.load_volume(args.fixed, "fixed")
    moving = renderer.load_volume(args.moving, "moving")
    result = match.load_match_outputs(args.match_dir)
    nodes = match.show_match(scene, result, fixed)
    output_transform = nodes["transforms"][-1]

    fixed_view = renderer.slice_view("Red")
    transform_displays = [output_transform.GetNthDisplayNode(index)
                          for index in range(output_transform.GetNumberOfDisplayNodes())]
    for display in transform_displays:
        if display.GetVisibility2D():  # the grid, on the fixed view (transform display nodes start hidden)
            display.SetViewNodeIDs([fixed_view.get_view_node_id()])
            display.SetVisibility(True)
    moving_view = renderer.slice_view("Yellow")  # created after: views take a display node's view list when made
    show_volume(fixed_view, fixed)
    show_volume(moving_view, moving)
    bounds = [0.0] * 6
    fixed.GetRASBounds(bounds)
    slice_z = bounds[4] + 0.55 * (bounds[5] - bounds[4])
    fixed_view.set_slice_value(slice_z)

    fixed_points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "GVSL fixed points")
    matched_points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "GVSL matched points")
    style_points(fixed_points, POINT_COLORS["fixed"], fixed_view)
    style_points(matched_points, POINT_COLORS["matched"], moving_view)
    link = probe.LinkedPointLists(fixed_points, matched_points, output_transform)
    place_fixed_points(fixed_points, fixed, slice_z, args.points)
    link.close()
    matched = np.array([matched_points.GetNthControlPointPositionWorld(i)
                        for i in range(matched_points.GetNumberOfControlPoints())])
    moving_view.set_slice_value(float(np.median(matched[:, 2])))
    write_png(out / "matches.png", np.hstack([renderer.capture(fixed_view), renderer.capture(moving_view)]))

    show_volume(fixed_view, nodes["checkerboard"])
    for display in transform_displays:
        display.SetVisibility(False)
    fixed_points.GetDisplayNode().SetVisibility(False)
    fixed_view.set_slice_value(slice_z)
    write_png(out / "checkerboard.png", renderer.capture(fixed_view))
    print("metrics:", json.dumps(result.metrics))


def render_segmentation(renderer: Renderer, args: argparse.Namespace, out: Path) -> None:
    image = renderer.load_volume(args.segment_image, "segmented image")
    label_image, table = label_maps.read_label_map(args.segment_labels)
    segmentation = label_maps.import_label_map(renderer.scene, label_image, table, image, name="GVSL segmentation")
    view = renderer.threed_view()
    view.reset_camera()
    view.reset_focal_point()
    camera = view.renderer().GetActiveCamera()
    camera.Azimuth(-50)  # from the left, in front and above
    camera.Elevation(25)
    camera.OrthogonalizeViewUp()
    view.renderer().ResetCamera()
    everything = renderer.capture(view)
    display = segmentation.GetDisplayNode()  # then without the first segment, to show what it covers
    display.SetSegmentVisibility(segmentation.GetSegmentation().GetNthSegmentID(0), False)
    write_png(out / "segmentation_3d.png", np.hstack([everything, renderer.capture(view)]))
    display.SetVisibility(False)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    renderer = Renderer()
    if args.segment_image and args.segment_labels:
        render_segmentation(renderer, args, out)  # first: recolouring segments with slice views open segfaults here
    render_matches(renderer, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
