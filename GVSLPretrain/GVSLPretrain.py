"""GVSL Pre-training: the Slicer module (Module / Widget / Logic / Test).

The widget wires the panel; the logic calls ``GVSLPretrainLib`` and ``GVSLSharedLib`` (MRML and the ``gvsl``
backend processes, no Qt; shared with GVSLSegment, which this module does not import) and never imports torch:
pre-training, scanning and matching run as ``gvsl`` processes with Slicer's Python. What both modules' classes have
in common (run control, backend check, logic base, self-test runner) is ``GVSLSharedLib.module_base``.
"""
import os
import pathlib
import time
from typing import Annotated

import qt
import slicer
import vtk
from GVSLPretrainLib import dicom_selection, presets, probe
from GVSLSharedLib import jobs, match, pipeline_check, plots, runs, samples, volumes
from GVSLSharedLib.module_base import (
    POLL_INTERVAL_MS,
    DeviceChoice,
    GVSLLogicBase,
    JobControl,
    RunControlMixin,
    acknowledgementText,
    ensureBackend,
    pathOrNone,
    registerSampleData,
    runPipelineCheck,
    sharedResourcePath,
    userGuideLink,
)
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, Decimals, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

LAST_RUN_SETTING = "GVSLPretrain/lastRunFolder"
FIXED_VIEWS = ("vtkMRMLSliceNodeRed", "vtkMRMLSliceNodeGreen", "vtkMRMLViewNode1")
MOVING_VIEW = "Yellow"  # the moving volume in its own space, with the matched points and the similarity map
SIMILARITY_NAME = "GVSL feature similarity"
SIMILARITY_DELAY_MS = 700


#
# Module
#


class GVSLPretrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GVSL Pre-training")
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["GVSL for 3D Slicer developers"]
        self.parent.helpText = _(
            "Pre-train a 3D network on your own unlabeled CT/MR collection with Geometric Visual Similarity Learning "
            "and inspect the correspondences it learned. <b>Data</b>: choose series from the DICOM database or a folder"
            " and scan them. <b>Pre-training</b>: runs <code>gvsl pretrain</code> in the background; the run folder "
            "keeps its progress, so the module reconnects to it later; the quick look preset takes minutes. <b>Inspect "
            "matches</b>: matches a moving volume to a fixed one with a checkpoint, or none (after an initial "
            "alignment, then refined on the pair itself unless the refinement steps are 0) and shows the transform, the"
            " warped volume and linked point lists. <b>Sample data</b>: two sample heads and a real brain with their "
            "segmentations, to try it on. <b>Metrics</b>: of the final match, and of the network's alone (<code>network"
            " ...</code>); <code>ncc_after</code> above <code>ncc_before</code> means the warped volume agrees better "
            "with the fixed one (local normalised cross-correlation, 0..1), which alone does not prove the points "
            "correspond; <code>nonpositive_jacobian_percent</code> is the share of the field that folds (0 is ideal)."
        ) + userGuideLink()
        self.parent.acknowledgementText = acknowledgementText()
        slicer.app.connect("startupCompleted()", self.registerSampleData)

    def registerSampleData(self):
        """The GVSL samples in Slicer's Sample Data module (registered here only: they serve both modules)."""
        registerSampleData(sharedResourcePath(os.path.dirname(__file__), "Icons/GVSLPretrain.png"), GVSLPretrainLogic())


#
# Parameter node
#


@parameterNodeWrapper
class GVSLPretrainParameterNode:
    """The module's settings, saved with the scene (names match SlicerParameterName in the .ui file).

    The run settings start at ``gvsl pretrain``'s defaults (``gvsl.train.config.TrainConfig``; a test checks), the
    "full" preset; ``device`` is the device combo box's (filled from what torch reports, so not bound by name).
    """

    modalities: str = "CT MR"
    dataFolder: pathlib.Path
    runFolder: pathlib.Path
    preset: Annotated[str, Choice(list(presets.PRESETS))] = presets.FULL
    iterations: Annotated[int, WithinRange(1, 10_000_000)] = 200_000
    patchSize: Annotated[int, WithinRange(16, 512)] = 128
    batchSize: Annotated[int, WithinRange(0, 256)] = 0  # runs.AUTO_BATCH: gvsl pretrain --batch auto
    learningRate: Annotated[float, WithinRange(1e-7, 1.0), Decimals(7)] = 1e-4
    precision: Annotated[str, Choice(["auto", "fp32", "bf16", "fp16"])] = "auto"
    device: str = "auto"
    initCheckpoint: pathlib.Path
    checkpoint: pathlib.Path
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    initialAlignment: Annotated[str, Choice([match.AS_TRAINED, "centres-of-mass", "physical"])] = match.AS_TRAINED
    refineSteps: Annotated[int, WithinRange(0, 10_000)] = 200  # gvsl.match.RefineConfig's default (a test checks)
    outputTransform: vtkMRMLTransformNode
    foregroundOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showCheckerboard: bool = False
    fixedPoints: vtkMRMLMarkupsFiducialNode
    movingPoints: vtkMRMLMarkupsFiducialNode
    movingSegmentation: vtkMRMLSegmentationNode


#
# Widget
#


class GVSLPretrainWidget(RunControlMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        RunControlMixin.__init__(self, LAST_RUN_SETTING, _("pre-training"))
        self.logic = None
        self._timer = None
        self._similarityTimer = None  # waits for a dragged point to settle before computing its similarity map
        self._similarityPoint = None  # fixed RAS point whose similarity map is wanted
        self._sampleControl = self._scanControl = self._matchControl = None  # JobControl of each short job
        self._deviceChoice = None
        self._shownMatch = None  # the job of the match shown: its folder holds the similarity job's inputs
        self._matchInputs = None  # inputs of the match shown, for the similarity job
        self._matchNodes = None
        self._matchTransform = None  # SimpleITK fixed -> moving (LPS) of the match shown
        self._similarityJob = None  # (process, output folder)
        self._probe = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GVSLPretrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GVSLPretrainLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self._similarityTimer = qt.QTimer()
        self._similarityTimer.setSingleShot(True)
        self._similarityTimer.setInterval(SIMILARITY_DELAY_MS)
        self._similarityTimer.connect("timeout()", self.startSimilarity)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._sampleControl = JobControl(_("Writing the sample"), [self.ui.loadSampleButton],
                                         self.ui.cancelSampleButton, self.ui.scanSummaryLabel, self._showSample,
                                         onChange=self.updateButtons)
        self._scanControl = JobControl(_("Scanning"), [self.ui.scanButton], self.ui.cancelScanButton,
                                       self.ui.scanSummaryLabel, self._showScan, onChange=self.updateButtons)
        self._matchControl = JobControl(_("Matching"), [self.ui.computeMatchesButton], self.ui.cancelMatchButton,
                                        self.ui.matchStatusLabel, self._showMatch, self.ui.matchProgressBar,
                                        onChange=self.updateButtons)
        self._deviceChoice = DeviceChoice(self.ui.deviceComboBox, self.logic, lambda: self._parameterNode)
        for sample in samples.SAMPLES:
            self.ui.sampleComboBox.addItem(sample.description, sample.kind)

        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.presetComboBox.connect("activated(int)", self.onPresetChosen)
        self.ui.databaseRadioButton.connect("toggled(bool)", self.updateDataSource)
        self.ui.refreshDatabaseButton.connect("clicked(bool)", self.onRefreshDatabase)
        self.ui.scanButton.connect("clicked(bool)", self.onScan)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self.onRunFolderChanged)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.latestCheckpointButton.connect("clicked(bool)", self.onUseLatestCheckpoint)
        self.ui.computeMatchesButton.connect("clicked(bool)", self.onComputeMatches)
        self.ui.propagateSegmentationButton.connect("clicked(bool)", self.onPropagateSegmentation)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.updateSliceViews)
        self.ui.checkerboardCheckBox.connect("toggled(bool)", self.updateSliceViews)
        for selector in (self.ui.fixedPointsSelector, self.ui.movingPointsSelector, self.ui.outputTransformSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateProbe)

        self.initializeParameterNode()
        self.updateDataSource()
        self.onRefreshDatabase()
        self._timer.start()

    def cleanup(self):
        """Short jobs end with the widget (cancelled: their folders go); a pre-training run goes on and is
        reconnected to later."""
        self._timer.stop()
        self._similarityTimer.stop()
        for control in (self._sampleControl, self._scanControl, self._matchControl):
            control.cancel()
        self._deviceChoice.cancel()
        if self._similarityJob is not None:
            self._similarityJob[0].kill()
        if self._shownMatch is not None:
            self._shownMatch.discard()
        if self._probe is not None:
            self._probe.close()
        self.removeObservers()

    def updateButtons(self):
        """Each action's button is enabled only when its inputs are set and its job is not running."""
        p = self._parameterNode
        if p is None:
            return
        fromDatabase = self.ui.databaseRadioButton.checked
        self.ui.scanButton.enabled = not self._scanControl.running and (
            fromDatabase or pathOrNone(p.dataFolder) is not None)
        self.ui.computeMatchesButton.enabled = not self._matchControl.running and bool(
            p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.propagateSegmentationButton.enabled = self._matchTransform is not None and bool(p.movingSegmentation)
        self.ui.latestCheckpointButton.enabled = self._run is not None and self._run.exists()
        self.ui.loadSampleButton.enabled = not self._sampleControl.running
        self._updateRunButtons(inputsReady=fromDatabase or pathOrNone(p.dataFolder) is not None)

    # Sample data

    def _showSample(self, job):
        """The sample's first volume as fixed, its atlas (with the segmentation) as moving."""
        loaded = self.logic.loadSample(job)
        p = self._parameterNode
        p.fixedVolume, p.movingVolume, p.movingSegmentation = loaded.target, loaded.atlas, loaded.segmentation
        slicer.util.setSliceViewerLayers(background=loaded.target, fit=True)
        self.ui.scanSummaryLabel.text = _("Loaded {names}.").format(
            names=", ".join(node.GetName() for node in (*loaded.volumes, loaded.segmentation)))

    # Pre-training presets

    def onPresetChosen(self, _index=None):
        """Set the run settings of the chosen preset (read from the combo box: the parameter node may lag)."""
        preset = presets.PRESETS.get(self.ui.presetComboBox.currentText)
        if preset is None or self._parameterNode is None:
            return
        p = self._parameterNode
        p.iterations, p.patchSize = preset.iterations, preset.patch
        p.batchSize, p.learningRate = preset.batch, preset.lr

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    # Data

    def updateDataSource(self, _checked=None):
        fromDatabase = self.ui.databaseRadioButton.checked
        self.ui.seriesTreeWidget.enabled = fromDatabase
        self.ui.refreshDatabaseButton.enabled = fromDatabase
        self.ui.dataFolderPathLineEdit.enabled = not fromDatabase

    def _modalities(self):
        return [m for m in self._parameterNode.modalities.upper().split() if m]

    def onRefreshDatabase(self, _checked=None):
        tree = self.ui.seriesTreeWidget
        tree.clear()
        database = slicer.dicomDatabase
        if database is None or not database.isOpen:
            return
        patients, studies = {}, {}
        for series in dicom_selection.database_series(database, self._modalities()):
            if series.patient not in patients:
                patients[series.patient] = self._treeItem(tree, [series.patient_name or series.patient, "", ""], None)
            if series.study not in studies:
                studies[series.study] = self._treeItem(
                    patients[series.patient], [series.study_description or series.study, "", ""], None)
            self._treeItem(studies[series.study], [series.description or series.series, series.modality,
                                                   str(series.n_files)], series.series)
        tree.expandToDepth(0)

    @staticmethod
    def _treeItem(parent, texts, seriesUid):
        item = qt.QTreeWidgetItem(parent, texts)
        item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsAutoTristate)
        item.setCheckState(0, qt.Qt.Unchecked)
        item.setData(0, qt.Qt.UserRole, seriesUid)
        return item

    def _checkedSeriesUids(self):
        """Series UIDs of the ticked series (leaves of the patient / study / series tree)."""
        tree = self.ui.seriesTreeWidget
        pending = [tree.topLevelItem(i) for i in range(tree.topLevelItemCount)]
        uids = []
        while pending:
            item = pending.pop()
            pending.extend(item.child(i) for i in range(item.childCount()))
            uid = item.data(0, qt.Qt.UserRole)
            if uid and item.checkState(0) == qt.Qt.Checked:
                uids.append(uid)
        return uids

    def _dataPath(self):
        """The collection as a folder: the chosen folder, or links to the ticked series in the run folder."""
        if not self.ui.databaseRadioButton.checked:
            folder = pathOrNone(self._parameterNode.dataFolder)
            if folder is None:
                raise ValueError(_("Choose the collection's folder."))
            return folder
        uids = self._checkedSeriesUids()
        runFolder = pathOrNone(self._parameterNode.runFolder)
        if not uids or runFolder is None:
            raise ValueError(_("Tick series in the DICOM database and choose the output folder (the selection is "
                               "linked there)."))
        return self.logic.linkDatabaseSelection(slicer.dicomDatabase, uids, runFolder)

    def onScan(self, _checked=None):
        with slicer.util.tryWithErrorDisplay(_("Scanning failed."), waitCursor=True):
            dataPath = self._dataPath()
            if not ensureBackend(self.logic):
                return
            self._scanControl.start(self.logic.startScan(dataPath, self._modalities()))

    def _showScan(self, job):
        self.ui.scanSummaryLabel.text = dicom_selection.summarize_scan(job.jsonPath.read_text(encoding="utf-8")
                                                                       ).describe()

    # Pre-training

    def onStart(self, _checked=None):
        with slicer.util.tryWithErrorDisplay(_("Could not start pre-training."), waitCursor=True):
            dataPath = self._dataPath()
            if not ensureBackend(self.logic):
                return
            self._trainProcess = self.logic.startPretraining(self._parameterNode, dataPath)
            self._startedRun()

    def updateRunPanel(self):
        self.updateButtons()
        progress = self._run.progress if self._run is not None else None
        if progress is None:
            return
        self.ui.progressLabel.text = self._progressText(
            progress, [_("{speed:.2f} it/s").format(speed=progress.it_per_s)] if progress.it_per_s else [])
        if progress.curves:
            self._showChartOnce(plots.update_loss_chart(slicer.mrmlScene, progress.curves))

    # Inspect matches

    def onUseLatestCheckpoint(self, _checked=None):
        checkpoints = self._run.checkpoints() if self._run is not None else []
        if not checkpoints:
            slicer.util.warningDisplay(_("The output folder's run has no checkpoint yet."))
            return
        self._parameterNode.checkpoint = checkpoints[-1]

    def onComputeMatches(self, _checked=None):
        """Match the moving volume to the fixed one, with the checkpoint or, without one, an untrained network whose
        answer the refinement on the pair carries."""
        with slicer.util.tryWithErrorDisplay(_("Could not compute matches."), waitCursor=True):
            p = self._parameterNode
            if not p.fixedVolume or not p.movingVolume:
                raise ValueError(_("Choose a fixed volume and a moving volume."))
            if not ensureBackend(self.logic):
                return
            self._matchControl.start(self.logic.startMatch(p.fixedVolume, p.movingVolume, pathOrNone(p.checkpoint),
                                                           p.device, p.refineSteps, p.initialAlignment))

    def _showMatch(self, job):
        """Show a finished match; returns True: its folder stays while it is shown (the probe reads its inputs)."""
        p = self._parameterNode
        result = match.load_match_outputs(job.outDir)
        self._matchNodes = match.show_match(slicer.mrmlScene, result, p.fixedVolume)
        self._matchTransform = result.transform
        self._matchInputs = job.inputs
        if self._shownMatch is not None:
            self._shownMatch.discard()
        self._shownMatch = job
        p.outputTransform = self._matchNodes["transforms"][-1]
        self.ui.metricsLabel.text = match.describe_metrics(result.metrics)
        self.ui.matchStatusLabel.text = _("Match shown ({seconds:.0f} s).").format(seconds=job.elapsed_s())
        if not p.fixedPoints:
            p.fixedPoints = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "GVSL fixed points")
        if not p.movingPoints:
            p.movingPoints = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "GVSL matched points")
        for points, views in ((p.fixedPoints, FIXED_VIEWS), (p.movingPoints, (f"vtkMRMLSliceNode{MOVING_VIEW}",))):
            points.CreateDefaultDisplayNodes()
            points.GetDisplayNode().SetViewNodeIDs(views)
        slicer.modules.markups.logic().SetActiveList(p.fixedPoints)
        self.updateSliceViews()
        self.updateProbe()
        return True

    def onPropagateSegmentation(self, _checked=None):
        with slicer.util.tryWithErrorDisplay(_("Could not propagate the segmentation."), waitCursor=True):
            p = self._parameterNode
            if self._matchTransform is None or not p.movingSegmentation:
                raise ValueError(_("Compute matches and choose the moving volume's segmentation first."))
            match.propagate_segmentation(slicer.mrmlScene, p.movingSegmentation, p.movingVolume, p.fixedVolume,
                                         self._matchTransform, f"{p.movingSegmentation.GetName()} on "
                                         f"{p.fixedVolume.GetName()}")

    @staticmethod
    def _setViewLayers(viewName, background, foreground=None, opacity=0.0):
        composite = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)

    def updateSliceViews(self, _value=None):
        """Red and Green: the fixed volume under the warped moving one (or the checkerboard); Yellow: the moving
        volume in its own space under the feature-similarity map.

        Reads the widgets: this slot may run before the parameter node has taken the new value.
        """
        if self._matchNodes is None:
            return
        for viewName in ("Red", "Green"):
            if self.ui.checkerboardCheckBox.checked:
                self._setViewLayers(viewName, self._matchNodes["checkerboard"])
            else:
                self._setViewLayers(viewName, self.ui.fixedVolumeSelector.currentNode(), self._matchNodes["warped"],
                                    self.ui.opacitySliderWidget.value)
        self._setViewLayers(MOVING_VIEW, self.ui.movingVolumeSelector.currentNode(),
                            slicer.mrmlScene.GetFirstNodeByName(SIMILARITY_NAME), 0.5)

    def updateProbe(self, _node=None):
        """Link the matched point list to the fixed one through the output transform (read from the selectors,
        which may be ahead of the parameter node)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        nodes = [selector.currentNode() for selector in (self.ui.fixedPointsSelector, self.ui.movingPointsSelector,
                                                          self.ui.outputTransformSelector)]
        if not all(nodes) or nodes[0] is nodes[1]:
            self.ui.probeLabel.text = _("Compute matches, then place points on the fixed volume.")
            return
        self._probe = probe.LinkedPointLists(*nodes, self.onProbePoint)
        self.ui.probeLabel.text = _("Place or drag points on the fixed volume; their matches follow.")

    def onProbePoint(self, index, pointFixedRas, pointMovingRas):
        """Show where the point went, centre the moving view on it, and recompute the similarity map for it."""
        fixedText = ", ".join(f"{c:.1f}" for c in pointFixedRas)
        movingText = ", ".join(f"{c:.1f}" for c in pointMovingRas)
        self.ui.probeLabel.text = _("Point {number}: fixed RAS ({fixed}) → moving RAS ({moving}) mm").format(
            number=index + 1, fixed=fixedText, moving=movingText)
        slicer.app.layoutManager().sliceWidget(MOVING_VIEW).mrmlSliceNode().JumpSliceByCentering(*pointMovingRas)
        if self._matchInputs is not None:
            self._similarityPoint = pointFixedRas
            self._similarityTimer.start()  # restarted by every move: computed once the point rests

    def startSimilarity(self):
        """Compute the similarity map of the last placed or moved point (an older computation is abandoned)."""
        if self._similarityJob is not None:
            self._similarityJob[0].kill()
        self._similarityJob = self.logic.startSimilarity(self._matchInputs, self._similarityPoint)

    def _pollSimilarity(self):
        process, outDir = self._similarityJob
        code = process.poll()
        if code is None:
            return
        self._similarityJob = None
        if code != 0:
            self.ui.probeLabel.text += "\n" + _("Feature similarity failed: {output}").format(
                output=process.new_output()[-500:])
            return
        match.show_overlay(slicer.mrmlScene, match.load_similarity(outDir), SIMILARITY_NAME)
        self.updateSliceViews()

    # Timer

    def onPoll(self):
        """Non-blocking check of the background jobs, once per timer tick; the buttons follow their inputs."""
        for control in (self._sampleControl, self._scanControl, self._matchControl):
            control.poll()
        self._deviceChoice.query()
        self._deviceChoice.poll()
        if self._similarityJob is not None:
            self._pollSimilarity()
        self._pollRun()
        self.updateButtons()


#
# Logic
#


class GVSLPretrainLogic(GVSLLogicBase):
    """Starts the ``gvsl`` processes and turns their outputs into nodes; no Qt widgets, no torch."""

    def __init__(self):
        GVSLLogicBase.__init__(self, runCommand="pretrain")

    def getParameterNode(self):
        return GVSLPretrainParameterNode(super().getParameterNode())

    @staticmethod
    def linkDatabaseSelection(database, seriesUids, runFolder):
        return dicom_selection.link_series_files(database, seriesUids, pathlib.Path(runFolder) / "dicom_selection")

    def startScan(self, dataPath, modalities):
        """``gvsl scan --json`` in the background; returns the job (its ``jsonPath``: the scan's output)."""
        folder = self.workFolder("scan")
        jsonPath = folder / "scan.json"
        process = runs.BackgroundProcess(runs.scan_command(dataPath, modalities), folder / "scan.log", jsonPath)
        return jobs.Job(process, folder, jsonPath=jsonPath)

    @staticmethod
    def startPretraining(parameterNode, dataPath):
        """``gvsl pretrain`` of a new run with the panel's settings and its preset's recipe flags."""
        p = parameterNode
        runFolder = pathOrNone(p.runFolder)
        if runFolder is None:
            raise ValueError(_("Choose the output folder."))
        command = runs.pretrain_command(dataPath, runFolder, iterations=p.iterations, patch=p.patchSize,
                                        batch=p.batchSize, lr=p.learningRate, precision=p.precision,
                                        device=p.device or "auto", init=pathOrNone(p.initCheckpoint),
                                        flags=presets.PRESETS[p.preset].flags)
        return runs.BackgroundProcess(command, runFolder / runs.PROCESS_LOG_NAME)

    def startMatch(self, fixedNode, movingNode, checkpoint, device="auto", refineSteps=None,
                   initialAlignment=match.AS_TRAINED):
        """``gvsl match`` on the two volumes in the background (``checkpoint`` None: an untrained network starts the
        match and the refinement on the pair carries it); returns the job: ``process``, ``outDir`` and ``inputs``
        (what ``startSimilarity`` needs).

        ``device`` as for pre-training; "auto" lets the backend pick CUDA, then Apple MPS, then the CPU.
        ``refineSteps``: the most refinement steps per stage on the pair (None: the backend's default, 0: the network
        alone); ``initialAlignment``: "centres-of-mass", "physical" or ``match.AS_TRAINED``.
        """
        return match.start_match(fixedNode, movingNode, checkpoint, self.workFolder("match"), device, refineSteps,
                                 initialAlignment)

    @staticmethod
    def startSimilarity(inputs, pointFixedRas):
        """The feature-similarity map of a fixed RAS point, in the background; returns (process, output folder)."""
        fixedPath, movingPath, checkpoint, device, initialAlignment = inputs
        outDir = fixedPath.parent / f"similarity-{time.monotonic_ns()}"
        command = match.similarity_command(fixedPath, movingPath, checkpoint, outDir, device, pointFixedRas,
                                           initialAlignment)
        return runs.BackgroundProcess(command, outDir / "similarity.log"), outDir


#
# Test
#


class GVSLPretrainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_widget_loads()
        self.test_volume_round_trip()
        self.setUp()
        self.test_pretrain_and_match()

    def test_widget_loads(self):
        self.assertTrue(os.path.exists(sharedResourcePath(os.path.dirname(__file__), "UI/GVSLPretrain.ui")))
        self.assertIsNotNone(GVSLPretrainLogic().getParameterNode())

    def test_volume_round_trip(self):
        """A volume node's voxels and IJK-to-RAS survive the trip to SimpleITK and back in Slicer itself."""
        import numpy as np

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        node.SetAndObserveImageData(volumes.image_data_from_array(np.arange(24, dtype=np.int16).reshape(2, 3, 4)))
        node.SetSpacing(0.5, 1.0, 2.5)
        node.SetOrigin(-10.0, 20.0, 5.0)
        copy = volumes.add_volume_node(slicer.mrmlScene, volumes.image_from_volume_node(node), "copy")
        before, after = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(before)
        copy.GetIJKToRASMatrix(after)
        self.assertEqual(volumes.numpy_from_vtk_matrix(before).tolist(), volumes.numpy_from_vtk_matrix(after).tolist())
        self.assertEqual(slicer.util.arrayFromVolume(node).tolist(), slicer.util.arrayFromVolume(copy).tolist())
        self.delayDisplay("Volume round trip OK")

    def test_pretrain_and_match(self):
        """Three sample heads, a short pre-training in a background process, a match between two heads shown as a
        transform hierarchy, a warped volume and a checkerboard (about a minute on a CPU)."""
        self.delayDisplay("Pre-training a tiny network on sample heads, then matching two of them")
        shown = runPipelineCheck(self, pipeline_check.check_pretrain_and_match, "pretrain")
        self.assertTrue(shown["checkpoint"].is_file())
        for node in (*shown["transforms"], shown["warped"], shown["checkerboard"]):
            self.assertIs(slicer.mrmlScene.GetNodeByID(node.GetID()), node)
        self.assertIsNone(shown["warped"].GetParentTransformNode())  # already resampled onto the fixed grid
        slicer.util.setSliceViewerLayers(background=shown["fixed"], foreground=shown["warped"], foregroundOpacity=0.5)
        self.delayDisplay(f"Pre-training and matching OK: {match.describe_metrics(shown['metrics'])}")
