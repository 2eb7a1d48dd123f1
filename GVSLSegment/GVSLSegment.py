"""GVSL Segmentation: the Slicer module (Module / Widget / Test). Logic that touches MRML lives in GVSLSegmentLib."""
import os

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


def _ui_path(module_dir):
    """The module's .ui file: installed next to the module, or in the source tree's shared Resources/."""
    installed = os.path.join(module_dir, "Resources", "UI", "GVSLSegment.ui")
    if os.path.exists(installed):
        return installed
    return os.path.join(module_dir, os.pardir, "Resources", "UI", "GVSLSegment.ui")


class GVSLSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "GVSL Segmentation"
        self.parent.categories = ["GVSL"]
        self.parent.dependencies = []
        self.parent.contributors = ["GVSL for 3D Slicer developers"]
        self.parent.helpText = (
            "Fine-tune a pre-trained GVSL network into a segmentation model with few labelled cases, "
            "and segment new scans. "
            "This version provides the backend (the <code>gvsl</code> command); the module's panels are being built."
        )
        self.parent.acknowledgementText = (
            "Geometric Visual Similarity Learning: Y. He et al., CVPR 2023. "
            "Sample data derived from the MNI ICBM152 2009 template."
        )


class GVSLSegmentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(_ui_path(os.path.dirname(__file__)))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.layout.addStretch(1)


class GVSLSegmentTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear(0)
        self.test_widget_loads()

    def test_widget_loads(self):
        self.assertTrue(os.path.exists(_ui_path(os.path.dirname(__file__))))
