"""Volume nodes ↔ SimpleITK images: the one place where LPS (SimpleITK, ITK files) meets RAS (Slicer nodes).

SimpleITK geometry is physical LPS (origin, spacing, direction); a Slicer volume
node stores origin and IJK-to-RAS directions in RAS. Voxel arrays are indexed
[k, j, i] on both sides, so only the first two physical axes change sign. Both
conversions use the node's own geometry (its parent transform is not applied):
harden a transformed volume first.
"""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""Flips the first two axes; it is its own inverse, so it also maps RAS to LPS."""


def flip_lps_ras(points) -> np.ndarray:
    """Points (..., 3) from LPS to RAS, or from RAS to LPS (the same sign flip of x and y)."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a SimpleITK image's voxel grid."""
    direction_lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction_lps @ np.diag(image.GetSpacing())
    matrix[:3, 3] = flip_lps_ras(image.GetOrigin())
    return matrix


def numpy_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix_from_numpy(array) -> vtk.vtkMatrix4x4:
    """A vtkMatrix4x4 from a 4x4 (or 3x3, padded with the identity) array."""
    array = np.asarray(array, dtype=float)
    padded = np.eye(4)
    padded[: array.shape[0], : array.shape[1]] = array
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(padded.ravel())
    return matrix


def image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, spacing 1) holding a [k, j, i] or [k, j, i, c] array (copied)."""
    array = np.ascontiguousarray(array)
    components = array.shape[3] if array.ndim == 4 else 1
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.reshape(-1, components), deep=True)
    image_data.GetPointData().SetScalars(scalars)
    return image_data


def array_from_image_data(image_data: vtk.vtkImageData) -> np.ndarray:
    """The voxels of a vtkImageData as a [k, j, i] (or [k, j, i, c]) array (a copy)."""
    i, j, k = image_data.GetDimensions()
    scalars = image_data.GetPointData().GetScalars()
    components = scalars.GetNumberOfComponents()
    shape = (k, j, i) if components == 1 else (k, j, i, components)
    return numpy_support.vtk_to_numpy(scalars).reshape(shape).copy()


def update_volume_node_from_image(node, image: sitk.Image) -> None:
    """Set a volume node's voxels and geometry from a SimpleITK image (LPS → RAS)."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    direction_ras = LPS_TO_RAS @ np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    node.SetAndObserveImageData(image_data_from_array(sitk.GetArrayFromImage(image)))
    node.SetSpacing(*image.GetSpacing())
    node.SetOrigin(*flip_lps_ras(image.GetOrigin()))
    node.SetIJKToRASDirectionMatrix(vtk_matrix_from_numpy(direction_ras))


def add_volume_node(scene, image: sitk.Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node in ``scene`` holding ``image`` (use ``vtkMRMLLabelMapVolumeNode`` for labels)."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def image_from_volume_node(node) -> sitk.Image:
    """The SimpleITK image (LPS geometry) of a volume node's voxels and IJK-to-RAS geometry."""
    image_data = node.GetImageData()
    if image_data is None:
        raise ValueError(f"volume {node.GetName()!r} holds no voxels")
    array = array_from_image_data(image_data)
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    direction_lps = LPS_TO_RAS @ numpy_from_vtk_matrix(directions)[:3, :3]
    image.SetSpacing(node.GetSpacing())
    image.SetOrigin(tuple(flip_lps_ras(node.GetOrigin())))
    image.SetDirection(tuple(direction_lps.ravel()))
    return image


def write_volume_node(node, path: os.PathLike, role: str = "volume") -> None:
    """Write a volume node's voxels in its own geometry (an LPS file, compressed); ValueError naming the ``role``
    and the node when it is under a transform (its own geometry would not be where it is shown)."""
    if node.GetParentTransformNode() is not None:
        raise ValueError(f"the {role} {node.GetName()!r} is under a transform: harden it or remove it first")
    sitk.WriteImage(image_from_volume_node(node), str(path), useCompression=True)
