"""Correspondence probe: a point list on the moving volume that follows a point list on the fixed volume.

Each fixed control point p (world RAS) has a partner at T(p) in the moving
list, where T is the match's output transform node's transform "from world"
(fixed → moving, RAS). The partners are recomputed whenever a fixed point is
added, dragged or removed, or the transform changes.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import slicer
import vtk
from GVSLSharedLib.transforms import transform_point_from_world

PointCallback = Callable[[int, np.ndarray, np.ndarray], None]
"""Called with (index, point_fixed_ras, point_moving_ras) for the last added or moved fixed point."""


class LinkedPointLists:
    """Keeps ``moving_points`` at the matched positions of ``fixed_points`` (both ``vtkMRMLMarkupsFiducialNode``).

    The moving list is locked (it follows; it is not edited). Call ``close()`` to stop following.
    """

    def __init__(self, fixed_points, moving_points, output_transform_node,
                 on_point_changed: Optional[PointCallback] = None):
        self.fixed_points = fixed_points
        self.moving_points = moving_points
        self.output_transform_node = output_transform_node
        self.on_point_changed = on_point_changed
        self.last_index: Optional[int] = None
        self.moving_points.SetLocked(True)
        markups = slicer.vtkMRMLMarkupsNode
        handlers = ((fixed_points, markups.PointAddedEvent, self._on_point_changed),
                    (fixed_points, markups.PointModifiedEvent, self._on_point_changed),
                    (fixed_points, markups.PointRemovedEvent, self._on_update_event),
                    (output_transform_node, slicer.vtkMRMLTransformableNode.TransformModifiedEvent,
                     self._on_update_event))
        self._observations = [(node, node.AddObserver(event, handler)) for node, event, handler in handlers]
        self.update()

    def matched_point(self, point_fixed_ras) -> np.ndarray:
        """The moving RAS position matched to a fixed RAS position."""
        return transform_point_from_world(self.output_transform_node, point_fixed_ras)

    def update(self) -> None:
        """Recompute every partner point (labels follow the fixed list)."""
        fixed, moving = self.fixed_points, self.moving_points
        count = fixed.GetNumberOfControlPoints()
        with slicer.util.NodeModify(moving):
            if moving.GetNumberOfControlPoints() != count:
                moving.RemoveAllControlPoints()
                for _ in range(count):
                    moving.AddControlPoint(0.0, 0.0, 0.0)
            for index in range(count):
                point_moving = self.matched_point(fixed.GetNthControlPointPositionWorld(index))
                moving.SetNthControlPointPositionWorld(index, *point_moving)
                moving.SetNthControlPointLabel(index, fixed.GetNthControlPointLabel(index))

    @vtk.calldata_type(vtk.VTK_INT)
    def _on_point_changed(self, caller, event, index) -> None:
        self.update()
        if index is None or not 0 <= index < self.fixed_points.GetNumberOfControlPoints():
            return
        self.last_index = index
        if self.on_point_changed is not None:
            point_fixed = np.array(self.fixed_points.GetNthControlPointPositionWorld(index))
            self.on_point_changed(index, point_fixed, self.matched_point(point_fixed))

    def _on_update_event(self, caller, event) -> None:
        self.update()

    def close(self) -> None:
        """Stop following the fixed list."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

