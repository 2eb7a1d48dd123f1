"""Live training curves (losses, validation Dice): a table node (one column per curve, against the iteration) shown in
one plot chart node."""
from __future__ import annotations

from typing import Optional

import vtk

ITERATION_COLUMN = "iteration"


def update_loss_chart(scene, curves: dict[str, list[tuple[int, float]]], name: str = "GVSL pre-training losses",
                      y_title: str = "loss", table_name: Optional[str] = None):
    """Create or refresh the chart node ``name`` from ``curves`` (loss name → [(iteration, value)]); returns it.

    The table node (``table_name``, default "NAME table") and one line series per loss are created on first use
    and reused (by name) afterwards. Curves sampled at other iterations (e.g. validation Dice) go to a table of
    their own in the same chart, so that their lines have no gaps.
    """
    table_name = table_name or f"{name} table"
    table_node = scene.GetFirstNodeByName(table_name) or scene.AddNewNodeByClass("vtkMRMLTableNode", table_name)
    chart = scene.GetFirstNodeByName(name) or scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle(ITERATION_COLUMN)
    chart.SetYAxisTitle(y_title)
    table = vtk.vtkTable()
    iterations = vtk.vtkDoubleArray()
    iterations.SetName(ITERATION_COLUMN)
    table.AddColumn(iterations)
    steps = sorted({iteration for values in curves.values() for iteration, _ in values})
    for step in steps:
        iterations.InsertNextValue(step)
    for loss, values in sorted(curves.items()):
        by_step = dict(values)
        column = vtk.vtkDoubleArray()
        column.SetName(loss)
        for step in steps:
            column.InsertNextValue(by_step.get(step, float("nan")))
        table.AddColumn(column)
        series_name = f"{name} {loss}"
        series = scene.GetFirstNodeByName(series_name)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name)
            series.SetPlotType(series.PlotTypeLine)
            series.SetXColumnName(ITERATION_COLUMN)
            series.SetYColumnName(loss)
            series.SetUniqueColor()
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table_node.GetID())
    table_node.SetAndObserveTable(table)
    return chart
