"""Slicer transform nodes from a match: fixed physical point → moving physical point, in RAS millimetres.

A match's ``transform`` (SimpleITK, LPS) maps a point of the fixed image to the
matching point of the moving image: the direction that resamples the moving
image into the fixed grid, which Slicer calls "from parent". Each component of
that transform becomes one node (linear components a linear transform node,
displacement fields a grid transform node) and the nodes are nested so that
Slicer applies them in the same order as SimpleITK: the component applied first
is the top parent. The deepest node is the output: its transform "from world"
is the whole match, and a moving volume placed under it is shown resampled into
the fixed volume's space.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from .volumes import LPS_TO_RAS, flip_lps_ras, image_data_from_array, vtk_matrix_from_numpy


def components_in_application_order(transform: sitk.Transform) -> list[sitk.Transform]:
    """The transforms that make up ``transform``, the one applied first to a point first.

    SimpleITK's composite transform applies its last-added transform first; nested composites are flattened.
    """
    if transform.GetName() != "CompositeTransform":
        return [transform]
    composite = sitk.CompositeTransform(transform)
    composite.FlattenTransform()
    return [composite.GetNthTransform(n) for n in reversed(range(composite.GetNumberOfTransforms()))]


def matrix_ras_from_linear(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix (RAS → RAS) of a linear SimpleITK transform (LPS → LPS)."""
    if not transform.IsLinear():
        raise ValueError(f"{transform.GetName()} is not linear")
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix_lps = np.eye(4)
    for axis in range(3):
        matrix_lps[:3, axis] = np.array(transform.TransformPoint(tuple(np.eye(3)[axis]))) - origin
    matrix_lps[:3, 3] = origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ matrix_lps @ flip


def grid_transform_from_displacement(displacement_mm_lps: sitk.Image) -> slicer.vtkOrientedGridTransform:
    """A VTK grid transform (RAS, x → x + d(x)) from a displacement field image (LPS vectors on an LPS grid)."""
    if displacement_mm_lps.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("a displacement field needs 3 components per voxel")
    vectors_ras = flip_lps_ras(sitk.GetArrayFromImage(displacement_mm_lps))  # [k, j, i, 3]
    grid = image_data_from_array(vectors_ras.astype(np.float64))
    grid.SetSpacing(displacement_mm_lps.GetSpacing())
    grid.SetOrigin(*flip_lps_ras(displacement_mm_lps.GetOrigin()))
    direction_ras = LPS_TO_RAS @ np.array(displacement_mm_lps.GetDirection(), dtype=float).reshape(3, 3)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetGridDirectionMatrix(vtk_matrix_from_numpy(direction_ras))
    transform.SetDisplacementGridData(grid)
    transform.SetInterpolationModeToLinear()
    return transform


def _node_from_component(scene, component: sitk.Transform, name: str):
    if component.IsLinear():
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{name} affine")
        node.SetMatrixTransformFromParent(vtk_matrix_from_numpy(matrix_ras_from_linear(component)))
        return node
    if component.GetName() != "DisplacementFieldTransform":
        raise ValueError(f"cannot show a {component.GetName()} in Slicer; expected linear or displacement field parts")
    field = sitk.DisplacementFieldTransform(component).GetDisplacementField()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", f"{name} deformable")
    node.SetAndObserveTransformFromParent(grid_transform_from_displacement(field))
    return node


def add_match_transform_nodes(scene, transform_fixed_to_moving_lps: sitk.Transform, name: str = "GVSL match") -> list:
    """Transform nodes for a match, nested top parent first; the last one is the output (see the module docstring).

    ``transform_fixed_to_moving_lps`` is the match's ``transform``. Returns the new nodes, outermost first.
    """
    nodes = []
    for component in components_in_application_order(transform_fixed_to_moving_lps):
        node = _node_from_component(scene, component, name)
        if nodes:
            node.SetAndObserveTransformNodeID(nodes[-1].GetID())
        nodes.append(node)
    return nodes


def transform_point_from_world(output_node, point_ras) -> np.ndarray:
    """Where the composed transform "from world" of ``output_node`` sends a RAS point (fixed → moving)."""
    general = vtk.vtkGeneralTransform()
    output_node.GetTransformFromWorld(general)
    return np.array(general.TransformPoint(tuple(float(c) for c in point_ras)))


def show_transform(scene, output_node, region_node=None) -> None:
    """Slicer's transform display on the output node: a deformed grid in slice views and glyphs in 3D.

    ``region_node`` (e.g. the fixed volume) bounds the 3D glyphs.
    """
    modes = ((True, False, "VIS_MODE_GRID"), (False, True, "VIS_MODE_GLYPH"))
    for visible_2d, visible_3d, mode in modes:
        display = scene.AddNewNodeByClass("vtkMRMLTransformDisplayNode")
        display.SetVisibility(True)  # a new transform display node starts hidden
        display.SetVisibility2D(visible_2d)
        display.SetVisibility3D(visible_3d)
        display.SetVisualizationMode(getattr(display, mode))
        if region_node is not None:
            display.SetAndObserveRegionNode(region_node)
        output_node.AddAndObserveDisplayNodeID(display.GetID())
