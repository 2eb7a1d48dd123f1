"""Render the two module panels from their Qt Designer files, offscreen, as the README shows them.

Slicer's own widgets need Slicer's application, so this draws each ``Resources/UI/<Module>.ui`` with plain Qt
(PySide6): Slicer's and CTK's widget classes become their closest Qt class (a collapsible section a group box, a
path line edit a line edit, a node selector a combo box showing the node's name) and the panel is filled with the
state a user sees after the quick start's steps (``STATES``: the metrics and times are those of ``gvsl match`` without
a checkpoint on the heads sample, see ``Screenshots/SOURCES.md``). The layout, labels, buttons and tooltips are the
.ui file's own. Run it in a separate venv::

    python3 -m venv /tmp/panel-venv && /tmp/panel-venv/bin/pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen /tmp/panel-venv/bin/python Documentation/render_panels.py --out Documentation/Screenshots
"""
from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 520  # pixels: a module panel's usual width
STAND_INS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "ctkPathLineEdit": "QLineEdit",
             "qMRMLNodeComboBox": "QComboBox", "ctkSliderWidget": "QSlider"}
DROPPED = {"filters", "nodeTypes", "noneEnabled", "addEnabled", "removeEnabled", "showChildNodeTypes",
           "renameEnabled", "SlicerParameterName", "selectNodeUponCreation", "showHidden", "baseName",
           "decimals", "singleStep", "minimum", "maximum", "value", "editEnabled", "noneDisplay"}
DEVICES = ["auto (CUDA, then Apple MPS, then CPU)", "CPU"]
SAMPLES = ["two sample heads (MNI152 T1 under known warps, 4 mm); grey and white matter drawn on the second"]
# What each panel shows after the quick start: object name -> text (line edits, labels) or entries (combo boxes)
STATES = {
    "GVSLPretrain": {
        "sampleComboBox": SAMPLES, "deviceComboBox": DEVICES, "presetComboBox": ["quick look"],
        "folderRadioButton": True, "dataFolderPathLineEdit": "/data/head-mr", "modalityLineEdit": "CT MR",
        "runFolderPathLineEdit": "/data/runs/head-mr-quick", "iterationsSpinBox": 300, "patchSpinBox": 48,
        "batchSpinBox": 1, "learningRateSpinBox": 0.001,
        "scanSummaryLabel": "Loaded GVSL sample head 1, GVSL sample head 2, GVSL sample head 2 segmentation.",
        "progressLabel": "Choose an output folder.",
        "fixedVolumeSelector": ["GVSL sample head 1"], "movingVolumeSelector": ["GVSL sample head 2"],
        "movingSegmentationSelector": ["GVSL sample head 2 segmentation"],
        "outputTransformSelector": ["GVSL match"], "fixedPointsSelector": ["GVSL fixed points"],
        "movingPointsSelector": ["GVSL matched points"],
        "matchStatusLabel": "Match shown (8 s).",
        "metricsLabel": "After refinement on the pair:\nncc_before: 0.3286\nncc_after: 0.6333\n"
                        "nonpositive_jacobian_percent: 0",
        "probeLabel": "Place or drag points on the fixed volume; their matches follow.",
    },
    "GVSLSegment": {
        "sampleComboBox": SAMPLES, "deviceComboBox": DEVICES, "sceneRadioButton": True,
        "caseVolumeSelector": ["GVSL sample head 2"], "caseSegmentationSelector": ["GVSL sample head 2 segmentation"],
        "casesTableWidget": [("GVSL sample head 2", "GVSL sample head 2 segmentation")],
        "inputVolumeSelector": ["GVSL sample head 1"], "atlasVolumeSelector": ["GVSL sample head 2"],
        "atlasSegmentationSelector": ["GVSL sample head 2 segmentation"],
        "outputSegmentationSelector": ["GVSL sample head 2 segmentation on GVSL sample head 1"],
        "iterationsSpinBox": 5000, "patchSpinBox": 96, "batchSpinBox": 2, "learningRateSpinBox": 0.0001,
        "validationSpinBox": 250, "progressLabel": "Choose an output folder.",
        "segmentStatusLabel": "GVSL sample head 2 segmentation on GVSL sample head 1: 2 segments (9 s).",
    },
}


def plain_qt_ui(path: Path) -> bytes:
    """The .ui file with Slicer's and CTK's widgets as plain Qt classes and their own properties left out."""
    tree = ET.parse(path)
    for widget in tree.iter("widget"):
        cls = widget.get("class")
        if cls in STAND_INS:
            widget.set("class", STAND_INS[cls])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if name in DROPPED and widget.get("class") in ("QLineEdit", "QComboBox", "QSlider", "QGroupBox",
                                                           "QWidget"):
                widget.remove(prop)
            elif name == "text" and cls == "ctkCollapsibleButton":
                prop.set("name", "title")
    for custom in tree.findall("customwidgets"):
        tree.getroot().remove(custom)
    return ET.tostring(tree.getroot())


def fill(panel: QtWidgets.QWidget, state: dict) -> None:
    for name, value in state.items():
        widget = panel.findChild(QtWidgets.QWidget, name)
        if widget is None:
            raise KeyError(f"{name} is not in the panel")
        if isinstance(widget, QtWidgets.QTableWidget):
            widget.setRowCount(len(value))
            for row, cells in enumerate(value):
                for column, text in enumerate(cells):
                    widget.setItem(row, column, QtWidgets.QTableWidgetItem(text))
        elif isinstance(widget, QtWidgets.QComboBox):
            if widget.count() and value[0] in [widget.itemText(i) for i in range(widget.count())]:
                widget.setCurrentText(value[0])
            else:
                widget.clear()
                widget.addItems(value)
        elif isinstance(widget, QtWidgets.QAbstractButton):
            widget.setChecked(value)
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            widget.setValue(value)
        else:
            widget.setText(value)
    for slider in panel.findChildren(QtWidgets.QSlider):
        slider.setOrientation(QtCore.Qt.Horizontal)
        slider.setValue(50)
    for bar in panel.findChildren(QtWidgets.QProgressBar):
        bar.setVisible(bar.objectName() == "progressBar")
    for button in panel.findChildren(QtWidgets.QPushButton):
        if button.text() == "Cancel" or button.objectName() in ("stopButton", "resumeButton"):
            button.setEnabled(False)


def render(module: str, out: Path) -> Path:
    loader = QtUiTools.QUiLoader()
    data = QtCore.QByteArray(plain_qt_ui(ROOT / "Resources" / "UI" / f"{module}.ui"))
    buffer = QtCore.QBuffer(data)
    buffer.open(QtCore.QIODevice.ReadOnly)
    panel = loader.load(buffer)
    if panel is None:
        raise RuntimeError(f"{module}.ui: {loader.errorString()}")
    fill(panel, STATES[module])
    panel.setFixedWidth(WIDTH)
    panel.adjustSize()
    panel.resize(WIDTH, panel.heightForWidth(WIDTH) if panel.hasHeightForWidth() else panel.sizeHint().height() + 12)
    image = QtGui.QImage(panel.size(), QtGui.QImage.Format_RGB32)
    image.fill(panel.palette().window().color())
    panel.render(image)
    path = out / f"{re.sub(r'^GVSL', '', module).lower()}_panel.png"
    if not image.save(str(path)):
        raise RuntimeError(f"cannot write {path}")
    print(f"wrote {path} ({image.width()}x{image.height()})")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "Documentation" / "Screenshots"), help="output folder")
    args = parser.parse_args(argv)
    app = QtWidgets.QApplication(sys.argv[:1])
    app.setStyle("Fusion")
    for module in STATES:
        render(module, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
