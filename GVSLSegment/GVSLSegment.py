"""GVSL Segmentation: the Slicer module (Module / Widget / Logic / Test).

The widget wires the panel; the logic calls ``GVSLSegmentLib`` and ``GVSLSharedLib`` (MRML and the ``gvsl`` backend
processes, no Qt; shared with GVSLPretrain, which this module does not import) and never imports torch:
fine-tuning, segmentation and matching run as ``gvsl`` processes with Slicer's Python. What both modules' classes have
in common (run control, backend check, logic base, self-test runner) is ``GVSLSharedLib.module_base``.
"""
import importlib.util
import os
import pathlib
import shutil
from typing import Annotated

import qt
import slicer
import vtk
from GVSLSegmentLib import finetuning, pipeline_check, results, training_data
from GVSLSharedLib import label_maps, plots, runs, samples, volumes
from GVSLSharedLib.module_base import (
    POLL_INTERVAL_MS,
    DeviceChoice,
    GVSLLogicBase,
    JobControl,
    RunControlMixin,
    acknowledgementText,
    ensureBackend,
    pathOrNone,
    runPipelineCheck,
    sharedResourcePath,
    userGuideLink,
)
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, Decimals, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

LAST_RUN_SETTING = "GVSLSegment/lastRunFolder"
TRAINING_DATA_DIR = "training_data"  # the scene's cases are exported into the run folder, next to the run
CHART = "GVSL fine-tuning"  # losses at logged iterations, validation Dice at validations
COMPARISON_CHART = "GVSL fine-tuning comparison"  # validation Dice of each arm-run of a comparison


#
# Module
#


class GVSLSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GVSL Segmentation")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["GVSL for 3D Slicer developers"]
        self.parent.helpText = _(
            "Fine-tune a pre-trained GVSL network into a segmentation model with few labelled cases, and segment new "
            "scans. <b>Training data</b>: (volume, segmentation) pairs from the scene, whose segments are matched by "
            "name, or a folder of labelled cases. <b>Fine-tune</b>: runs <code>gvsl finetune</code> in the background; "
            "the run folder keeps its progress, so the module reconnects to it later. <b>Compare with training from "
            "scratch</b>: also trains the same network from random weights on the same cases, crops and budget, and "
            "reports which final model segments the held-out cases better. <b>Segment</b>: runs the fine-tuned model on"
            " a volume, or carries an atlas segmentation onto it through a match (no training: a pre-trained "
            "checkpoint, or none, the refinement on the pair carrying it). <b>Sample data</b>: two sample heads and a "
            "real brain with their segmentations, to try it on. <b>Validation Dice</b>: overlap of the model's "
            "segmentation with the held-out cases' (0..1, higher is better), per label and mean; the run keeps the best"
            " checkpoint."
        ) + userGuideLink()
        self.parent.acknowledgementText = acknowledgementText()


#
# Parameter node
#


@parameterNodeWrapper
class GVSLSegmentParameterNode:
    """The module's settings, saved with the scene (names match SlicerParameterName in the .ui file).

    The training cases' table lives in the widget (its rows are node pairs). The run settings start at
    ``gvsl finetune``'s defaults (``gvsl.finetune.config.FinetuneConfig``; a test checks).
    """

    caseVolume: vtkMRMLScalarVolumeNode
    caseSegmentation: vtkMRMLSegmentationNode
    dataFolder: pathlib.Path
    unlabelledFolder: pathlib.Path
    runFolder: pathlib.Path
    initCheckpoint: pathlib.Path
    mode: Annotated[str, Choice([finetuning.AUTO_MODE, *finetuning.MODES])] = "auto"  # finetuning.AUTO_MODE
    iterations: Annotated[int, WithinRange(1, 10_000_000)] = 5000
    patchSize: Annotated[int, WithinRange(16, 512)] = 96
    batchSize: Annotated[int, WithinRange(1, 256)] = 2
    learningRate: Annotated[float, WithinRange(1e-7, 1.0), Decimals(7)] = 1e-4
    validationInterval: Annotated[int, WithinRange(1, 10_000_000)] = 250
    precision: Annotated[str, Choice(["auto", "fp32", "bf16", "fp16"])] = "auto"
    device: str = "auto"
    compareWithScratch: bool = False
    model: pathlib.Path
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    matchCheckpoint: pathlib.Path
    atlasVolume: vtkMRMLScalarVolumeNode
    atlasSegmentation: vtkMRMLSegmentationNode


#
# Widget
#


class GVSLSegmentWidget(RunControlMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        RunControlMixin.__init__(self, LAST_RUN_SETTING, _("fine-tuning"))
        self.logic = None
        self._timer = None
        self._sampleControl = self._segmentControl = None  # JobControl of each short job
        self._deviceChoice = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GVSLSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GVSLSegmentLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)

        segmentButtons = [self.ui.segmentButton, self.ui.segmentDicomSegButton, self.ui.segmentByMatchingButton]
        self._sampleControl = JobControl(_("Writing the sample"), [self.ui.loadSampleButton],
                                         self.ui.cancelSampleButton, self.ui.segmentStatusLabel, self._showSample,
                                         onChange=self.updateButtons)
        self._segmentControl = JobControl(_("Segmenting"), segmentButtons, self.ui.cancelSegmentButton,
                                          self.ui.segmentStatusLabel, self._showSegmentation,
                                          self.ui.segmentProgressBar, onChange=self.updateButtons)
        self._deviceChoice = DeviceChoice(self.ui.deviceComboBox, self.logic, lambda: self._parameterNode)
        for sample in samples.SAMPLES:
            self.ui.sampleComboBox.addItem(sample.description, sample.kind)

        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.sceneRadioButton.connect("toggled(bool)", self.updateDataSource)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCases)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self.onRunFolderChanged)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.useRunModelButton.connect("clicked(bool)", self.onUseRunModel)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.segmentDicomSegButton.connect("clicked(bool)", self.onSegmentToDicomSeg)
        self.ui.segmentByMatchingButton.connect("clicked(bool)", self.onSegmentByMatching)

        self.initializeParameterNode()
        self.updateDataSource()
        self._timer.start()

    def cleanup(self):
        """Short jobs end with the widget (cancelled: their folders go); a fine-tuning run goes on and is
        reconnected to later."""
        self._timer.stop()
        for control in (self._sampleControl, self._segmentControl):
            control.cancel()
        self._deviceChoice.cancel()
        self.removeObservers()

    def updateButtons(self):
        """Each action's button is enabled only when its inputs are set and its job is not running."""
        p = self._parameterNode
        if p is None:
            return
        segmenting = self._segmentControl.running
        hasModel = pathOrNone(p.model) is not None and bool(p.inputVolume)
        self.ui.segmentButton.enabled = self.ui.segmentDicomSegButton.enabled = not segmenting and hasModel
        self.ui.segmentByMatchingButton.enabled = not segmenting and bool(
            p.inputVolume and p.atlasVolume and p.atlasSegmentation and p.inputVolume != p.atlasVolume)
        self.ui.useRunModelButton.enabled = self._run is not None and self._run.exists()
        self.ui.loadSampleButton.enabled = not self._sampleControl.running
        fromScene = self.ui.sceneRadioButton.checked
        self._updateRunButtons(inputsReady=self.ui.casesTableWidget.rowCount > 0 if fromScene
                               else pathOrNone(p.dataFolder) is not None)

    # Sample data

    def _showSample(self, job):
        """The sample's atlas (volume and segmentation) as a training case and as the atlas, its first volume as the
        input to segment."""
        loaded = self.logic.loadSample(job)
        p = self._parameterNode
        p.inputVolume, p.atlasVolume, p.atlasSegmentation = loaded.target, loaded.atlas, loaded.segmentation
        self.ui.caseVolumeSelector.setCurrentNode(loaded.atlas)
        self.ui.caseSegmentationSelector.setCurrentNode(loaded.segmentation)
        self.onAddCase()
        slicer.util.setSliceViewerLayers(background=loaded.target, fit=True)
        self.ui.segmentStatusLabel.text = _("Loaded {names}.").format(
            names=", ".join(node.GetName() for node in (*loaded.volumes, loaded.segmentation)))

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self.ui.casesTableWidget.setRowCount(0)

    # Training data

    def updateDataSource(self, _checked=None):
        fromScene = self.ui.sceneRadioButton.checked
        for widget in (self.ui.casesTableWidget, self.ui.caseVolumeSelector, self.ui.caseSegmentationSelector,
                       self.ui.addCaseButton, self.ui.removeCaseButton):
            widget.enabled = fromScene
        self.ui.dataFolderPathLineEdit.enabled = not fromScene

    def onAddCase(self, _checked=None):
        """Add the chosen (volume, segmentation) pair as a row; each node shows by name, its ID kept with it."""
        volume, segmentation = self.ui.caseVolumeSelector.currentNode(), self.ui.caseSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            slicer.util.warningDisplay(_("Choose a volume and the segmentation drawn on it."))
            return
        table = self.ui.casesTableWidget
        row = table.rowCount
        table.insertRow(row)
        for column, node in enumerate((volume, segmentation)):
            item = qt.QTableWidgetItem(node.GetName())
            item.setData(qt.Qt.UserRole, node.GetID())
            table.setItem(row, column, item)

    def onRemoveCases(self, _checked=None):
        table = self.ui.casesTableWidget
        for row in sorted({item.row() for item in table.selectedItems()}, reverse=True):
            table.removeRow(row)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node):
        """Rows whose volume or segmentation left the scene go with it."""
        table = self.ui.casesTableWidget
        for row in reversed(range(table.rowCount)):
            if node.GetID() in (table.item(row, column).data(qt.Qt.UserRole) for column in (0, 1)):
                table.removeRow(row)

    def _cases(self):
        table = self.ui.casesTableWidget
        return [training_data.TrainingCase(*(slicer.mrmlScene.GetNodeByID(table.item(row, column).data(qt.Qt.UserRole))
                                             for column in (0, 1)))
                for row in range(table.rowCount)]

    def _trainingData(self, runFolder):
        """DATA for ``gvsl finetune``: the chosen folder, or the scene's cases exported into the run folder."""
        if not self.ui.sceneRadioButton.checked:
            folder = pathOrNone(self._parameterNode.dataFolder)
            if folder is None:
                raise ValueError(_("Choose the folder of labelled cases."))
            return folder
        table = self.logic.exportTrainingData(self._cases(), runFolder / TRAINING_DATA_DIR)
        names = ", ".join(entry["name"] for entry in table["labels"])
        self.ui.logTextEdit.appendPlainText(_("Exported {count} cases; labels: {names}.").format(
            count=self.ui.casesTableWidget.rowCount, names=names))
        return runFolder / TRAINING_DATA_DIR

    # Fine-tuning

    def onStart(self, _checked=None):
        with slicer.util.tryWithErrorDisplay(_("Could not start fine-tuning."), waitCursor=True):
            p = self._parameterNode
            runFolder = pathOrNone(p.runFolder)
            if runFolder is None:
                raise ValueError(_("Choose the output folder."))
            unlabelled = pathOrNone(p.unlabelledFolder)
            trained = finetuning.effective_mode(p.mode, unlabelled)
            if trained in finetuning.PRETRAINED_MODES and pathOrNone(p.initCheckpoint) is None:
                raise ValueError(_("Choose the pre-trained checkpoint (or the scratch mode)."))
            if p.compareWithScratch and trained == finetuning.COMPARED_MODE and unlabelled is None:
                raise ValueError(_("Choose another mode to compare with training from scratch."))
            dataPath = self._trainingData(runFolder)
            if not ensureBackend(self.logic):
                return
            self._trainProcess = self.logic.startFinetuning(p, dataPath)
            self._startedRun()

    def updateRunPanel(self):
        self.updateButtons()
        progress = self._run.progress if self._run is not None else None
        self.ui.comparisonResultsLabel.text = finetuning.comparison_text(progress) if progress is not None else ""
        if progress is None:
            return
        if progress.arm_runs:
            self.ui.progressLabel.text = self._progressText(progress)
            curves = finetuning.comparison_curves(progress)
            if curves:
                self._showChartOnce(plots.update_loss_chart(slicer.mrmlScene, curves, COMPARISON_CHART,
                                                            y_title="validation Dice"))
            return
        losses, dice = finetuning.split_curves(progress.curves)
        details = []
        if losses.get("loss"):
            details.append(_("loss {value:.4f}").format(value=losses["loss"][-1][1]))
        if dice.get(finetuning.MEAN_DICE_NAME):
            details.append(_("validation Dice {value:.3f}").format(value=dice[finetuning.MEAN_DICE_NAME][-1][1]))
        self.ui.progressLabel.text = self._progressText(progress, details)
        if losses:
            chart = plots.update_loss_chart(slicer.mrmlScene, losses, CHART, y_title="loss / Dice")
            if dice:
                plots.update_loss_chart(slicer.mrmlScene, dice, CHART, y_title="loss / Dice",
                                        table_name=f"{CHART} Dice table")
            self._showChartOnce(chart)

    # Segmentation

    def onUseRunModel(self, _checked=None):
        """The output folder's run as the model (``gvsl segment`` takes its best model); for a comparison, its first
        arm-run's (the chosen mode, first seed)."""
        if self._run is None or not self._run.exists():
            slicer.util.warningDisplay(_("Choose the fine-tuning run's output folder first."))
            return
        armRuns = self._run.progress.arm_runs
        self._parameterNode.model = self._run.path / runs.ARMS_DIR / armRuns[0] if armRuns else self._run.path

    def onSegment(self, _checked=None):
        with slicer.util.tryWithErrorDisplay(_("Could not segment."), waitCursor=True):
            p = self._parameterNode
            model = pathOrNone(p.model)
            if model is None or not p.inputVolume:
                raise ValueError(_("Choose a model (a fine-tuning run folder or its checkpoint) and an input volume."))
            if not ensureBackend(self.logic):
                return
            self._startSegmentJob(self.logic.startSegmentation(p.inputVolume, model, p.device),
                                  f"{p.inputVolume.GetName()} segmentation")

    def onSegmentToDicomSeg(self, _checked=None):
        """Segment a volume loaded from the DICOM database as its series, and write a DICOM SEG that references it."""
        with slicer.util.tryWithErrorDisplay(_("Could not segment into a DICOM SEG."), waitCursor=True):
            p = self._parameterNode
            model = pathOrNone(p.model)
            if model is None or not p.inputVolume:
                raise ValueError(_("Choose a model (a fine-tuning run folder or its checkpoint) and an input volume "
                                   "loaded from the DICOM database."))
            if not ensureBackend(self.logic):
                return
            self._startSegmentJob(self.logic.startDicomSegmentation(p.inputVolume, model, p.device),
                                  f"{p.inputVolume.GetName()} segmentation")

    def onSegmentByMatching(self, _checked=None):
        """Carry the atlas segmentation onto the input through a match: with the checkpoint or, without one, an
        untrained network whose answer the refinement on the pair carries."""
        with slicer.util.tryWithErrorDisplay(_("Could not segment by matching."), waitCursor=True):
            p = self._parameterNode
            if not p.inputVolume or not p.atlasVolume or not p.atlasSegmentation:
                raise ValueError(_("Choose an input volume, and an atlas volume with its segmentation."))
            if not ensureBackend(self.logic):
                return
            job = self.logic.startSegmentationByMatching(p.inputVolume, p.atlasVolume, p.atlasSegmentation,
                                                         pathOrNone(p.matchCheckpoint), p.device)
            self._startSegmentJob(job, _("{atlas} on {input}").format(atlas=p.atlasSegmentation.GetName(),
                                                                       input=p.inputVolume.GetName()))

    def _startSegmentJob(self, job, outputName):
        job.outputName = outputName
        self._segmentControl.start(job)

    def _showSegmentation(self, job):
        """The job's label map as the output segmentation; a DICOM SEG goes into the DICOM database (its folder is
        kept, and named, when it could not be added)."""
        p = self._parameterNode
        output = results.segmentation_of_job(slicer.mrmlScene, job, p.outputSegmentation, job.outputName)
        p.outputSegmentation = output
        slicer.util.setSliceViewerLayers(background=job.inputNode, fit=True)
        count = output.GetSegmentation().GetNumberOfSegments()
        self.ui.segmentStatusLabel.text = _("{name}: {count} segments ({seconds:.0f} s).").format(
            name=output.GetName(), count=count, seconds=job.elapsed_s())
        if job.seg is None:
            return False
        from DICOMLib import DICOMUtils
        added = DICOMUtils.importDicom(str(job.seg.parent), copyFiles=True)
        where = _("added to the DICOM database") if added else _("not added to the DICOM database")
        self.ui.segmentStatusLabel.text += "\n" + _("DICOM SEG: {path} ({where}).").format(path=job.seg, where=where)
        return not added

    # Timer

    def onPoll(self):
        """Non-blocking check of the background jobs, once per timer tick; the buttons follow their inputs."""
        for control in (self._sampleControl, self._segmentControl):
            control.poll()
        self._deviceChoice.query()
        self._deviceChoice.poll()
        self._pollRun()
        self.updateButtons()


#
# Logic
#


class GVSLSegmentLogic(GVSLLogicBase):
    """Starts the ``gvsl`` processes and turns their outputs into nodes; no Qt widgets, no torch."""

    def __init__(self):
        GVSLLogicBase.__init__(self, runCommand="finetune")

    def getParameterNode(self):
        return GVSLSegmentParameterNode(super().getParameterNode())

    @staticmethod
    def exportTrainingData(cases, folder):
        """Write the (volume, segmentation) cases in ``gvsl finetune``'s format into ``folder`` (the module's own
        export folder in a run folder: an earlier export, from a start that did not go through, is replaced);
        returns the label table."""
        folder = pathlib.Path(folder)
        if folder.exists():
            shutil.rmtree(folder)
        return training_data.export_training_data(slicer.mrmlScene, cases, folder)

    @staticmethod
    def startFinetuning(parameterNode, dataPath):
        p = parameterNode
        runFolder = pathOrNone(p.runFolder)
        command = finetuning.finetune_command(dataPath, pathOrNone(p.initCheckpoint), runFolder, mode=p.mode,
                                              iterations=p.iterations, patch=p.patchSize, batch=p.batchSize,
                                              lr=p.learningRate, val_every=p.validationInterval,
                                              precision=p.precision, device=p.device or "auto",
                                              compare_with_scratch=p.compareWithScratch,
                                              unlabelled=pathOrNone(p.unlabelledFolder))
        return runs.BackgroundProcess(command, runFolder / runs.PROCESS_LOG_NAME)

    def startSegmentation(self, inputNode, model, device="auto"):
        """``gvsl segment`` on the volume in the background; returns the job: ``process``, ``labels`` (the label
        map it writes), ``table`` (its label table) and ``seg`` (None: no DICOM SEG)."""
        return results.start_segmentation(inputNode, model, self.workFolder("segment"), device)

    def startDicomSegmentation(self, inputNode, model, device="auto", fileForInstance=None):
        """``gvsl segment DICOM_SERIES --dicom-seg SEG`` for a volume loaded from Slicer's DICOM database: its series
        is segmented and the job's ``seg`` is a DICOM SEG of the result that references it (otherwise the job is
        ``startSegmentation``'s). ``fileForInstance``: SOP Instance UID → file, by default the database's."""
        if importlib.util.find_spec("highdicom") is None:  # gvsl segment runs with this Python
            raise ValueError(_("DICOM SEG export needs the Python package highdicom (gvsl[dicom-seg]): install it "
                               "from Slicer's Python console with slicer.util.pip_install('highdicom')."))
        if fileForInstance is None:
            database = slicer.dicomDatabase
            if database is None or not database.isOpen:
                raise ValueError(_("Open the DICOM database and load the volume from it."))
            fileForInstance = database.fileForInstance
        files = results.dicom_source_files(inputNode, fileForInstance)
        return results.start_segmentation(inputNode, model, self.workFolder("segment"), device, dicom_files=files)

    def startSegmentationByMatching(self, inputNode, atlasNode, atlasSegmentationNode, checkpoint, device="auto"):
        """``gvsl match INPUT ATLAS --labels ATLAS_LABELS``: the atlas segmentation carried onto the input through
        the match (``checkpoint`` None: an untrained network starts it, the refinement on the pair carries it);
        returns the job as ``startSegmentation`` does (the table is the atlas's)."""
        return results.start_segmentation_by_matching(slicer.mrmlScene, inputNode, atlasNode, atlasSegmentationNode,
                                                      checkpoint, self.workFolder("atlas"), device)


#
# Test
#


class GVSLSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_widget_loads()
        self.test_label_map_becomes_segmentation()
        self.setUp()
        self.test_finetune_and_segment()

    def test_widget_loads(self):
        self.assertTrue(os.path.exists(sharedResourcePath(os.path.dirname(__file__), "UI/GVSLSegment.ui")))
        self.assertIsNotNone(GVSLSegmentLogic().getParameterNode())

    def test_label_map_becomes_segmentation(self):
        """A label map is imported with the table's names and colours and a closed surface, in Slicer itself."""
        import numpy as np
        import SimpleITK as sitk

        array = np.zeros((20, 24, 28), np.uint8)
        array[4:12, 5:15, 6:18] = 2
        node = volumes.add_volume_node(slicer.mrmlScene, sitk.GetImageFromArray(array.astype(np.int16)), "input")
        labels = sitk.GetImageFromArray(array)
        table = {"labels": [{"value": 1, "name": "liver", "color": [0.8, 0.4, 0.2]},
                            {"value": 2, "name": "tumour", "color": [1.0, 1.0, 0.0]}]}
        output = label_maps.import_label_map(slicer.mrmlScene, labels, table, node)
        segmentation = output.GetSegmentation()
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(2)], ["tumour", "liver"])
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))
        self.delayDisplay("Label map import OK")

    def test_finetune_and_segment(self):
        """Sample heads with tissue segmentations: a short pre-training, fine-tuning on two heads in a background
        process, segmentation of a third into a named, coloured segmentation with closed surfaces."""
        self.delayDisplay("Pre-training, fine-tuning and segmenting sample heads with a tiny network")
        out = runPipelineCheck(self, pipeline_check.check_finetune_and_segment, "segment")
        segmentation = out["segmentation"]
        self.assertIs(slicer.mrmlScene.GetNodeByID(segmentation.GetID()), segmentation)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(),
                         out["cases"][0].segmentation_node.GetSegmentation().GetNumberOfSegments())
        slicer.util.setSliceViewerLayers(background=out["target"])
        self.delayDisplay("Fine-tuning and segmentation OK")
