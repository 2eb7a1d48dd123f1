"""What GVSLPretrain's and GVSLSegment's Widget, Logic and Test classes have in common.

``RunControlMixin`` (Start/Stop/Resume of a ``gvsl`` run folder, reconnecting to it later), ``ensureBackend``
(torch and the backend, installed on a user action after confirmation), ``GVSLLogicBase`` (the backend's
installation, work folders, resuming a run) and ``runPipelineCheck`` (a self-test's body in Slicer's scene).
Unlike the rest of ``GVSLSharedLib`` this file imports Qt and Slicer's scripted-module classes: only the modules
import it. Each module passes its own settings key and ``gvsl`` command; nothing here defaults to either module's.
"""
import os
import pathlib
import shutil
import tempfile
import time

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import dependencies, pipeline_check, runs

POLL_INTERVAL_MS = 1000  # the widgets' timer: non-blocking checks of their background processes
STOP_GRACE_S = 120.0
# The user guide (the extension's README): EXTENSION_HOMEPAGE in CMakeLists.txt, which a test compares with this.
USER_GUIDE_URL = "https://github.com/gvsl-slicer/SlicerGVSL#readme"


def userGuideLink():
    """The help text's paragraph that points to the user guide."""
    return _(
        '<p>The <a href="{url}">user guide</a> covers installation, pre-training on a GPU server or a cluster, the '
        "published GVSL weights, what the metrics mean and troubleshooting (no GPU found, out of memory, a CUDA "
        "build of torch on a CPU machine).</p>"
    ).format(url=USER_GUIDE_URL)


def acknowledgementText():
    return _(
        "Geometric Visual Similarity Learning: Y. He et al., CVPR 2023. "
        "Sample data derived from the MNI ICBM152 2009 template."
    )


def pathOrNone(path):
    """A path parameter, or None when empty (an empty ctkPathLineEdit reads as Path("."))."""
    return None if path is None or str(path) in ("", ".") else pathlib.Path(path)


def sharedResourcePath(moduleDir, filename):
    """A file of the modules' shared ``Resources/`` (e.g. ``UI/GVSLPretrain.ui``) for the module file in
    ``moduleDir``: beside it as installed (where Slicer's ``resourcePath`` looks), else in the source checkout's top
    folder."""
    installed = os.path.join(moduleDir, "Resources", filename)
    if os.path.exists(installed):
        return installed
    return os.path.join(moduleDir, os.pardir, "Resources", filename)


#
# Widget
#


def ensureBackend(logic):
    """torch (PyTorch extension) and the gvsl backend, installed on this user action after confirmation; True when
    both are there."""
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(_("GVSL needs the PyTorch extension: install it with the Extensions Manager."))
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=True) is None:
        return False
    try:
        missing = logic.missingBackendPackages()
    except RuntimeError as exc:  # the extension was installed without its backend folder
        slicer.util.errorDisplay(str(exc))
        return False
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
            _("GVSL will install these Python packages into Slicer's Python (Slicer's own numpy, SimpleITK "
              "and VTK are kept):") + "\n\n" + "\n".join(missing)):
        return False
    with slicer.util.tryWithErrorDisplay(_("Installing the GVSL backend failed."), waitCursor=True):
        logic.installBackend()
    return True


class RunControlMixin:
    """Start/Stop/Resume plumbing shared by the widgets that follow a ``gvsl`` run folder.

    The widget calls ``RunControlMixin.__init__`` with its QSettings key for the last run folder and the run's name
    for messages, and provides ``self.ui`` (startButton, stopButton, resumeButton, progressBar, progressLabel,
    logTextEdit, runFolderPathLineEdit), ``self.logic`` (a ``GVSLLogicBase``: its ``runCommand`` is the run's
    ``gvsl`` command, its ``resumeRun`` continues a run), a parameter node with ``runFolder`` and
    ``updateRunPanel``. ``resourcePath`` is Slicer's, with the source checkout's ``Resources/`` as a fallback.
    """

    def __init__(self, lastRunSetting, runName):
        self.lastRunSetting = lastRunSetting  # QSettings key of the last run folder used (reconnect)
        self.runName = runName
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._trainProcess = None
        self._run = None  # runs.RunFolder being shown
        self._chartShown = False

    def resourcePath(self, filename):
        return sharedResourcePath(os.path.dirname(slicer.util.modulePath(self.moduleName)), filename)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def initializeParameterNode(self):
        """The module's parameter node, its run folder defaulting to the last one used (reconnect)."""
        self.setParameterNode(self.logic.getParameterNode())
        if pathOrNone(self._parameterNode.runFolder) is None:
            last = qt.QSettings().value(self.lastRunSetting)
            if last:
                self._parameterNode.runFolder = pathlib.Path(last)
        self.onRunFolderChanged()

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onRunFolderChanged(self, _path=None):
        """Show the run in the output folder (reconnect to a running or finished run) or prepare a new one."""
        runFolder = pathOrNone(self.ui.runFolderPathLineEdit.currentPath)
        if self._run is not None and runFolder == self._run.path:
            return
        self._run = runs.RunFolder(runFolder) if runFolder is not None else None
        self._chartShown = False
        self.ui.logTextEdit.clear()
        if self._run is not None and self._run.exists():
            qt.QSettings().setValue(self.lastRunSetting, str(runFolder))
            self.ui.logTextEdit.appendPlainText(_("Reconnected to the run in {folder}.").format(folder=runFolder))
            self._pollRun()
        self.updateRunPanel()

    def _startedRun(self):
        qt.QSettings().setValue(self.lastRunSetting, str(self._run.path))
        self._run.progress.state = "running"
        self.updateRunPanel()

    def onResume(self, _checked=None):
        with slicer.util.tryWithErrorDisplay(_("Could not resume {run}.").format(run=self.runName), waitCursor=True):
            if not ensureBackend(self.logic):
                return
            self._trainProcess = self.logic.resumeRun(self._run.path)
            self._startedRun()

    def onStop(self, _checked=None):
        self._run.request_stop()
        if self._trainProcess is not None:
            self._trainProcess.stop(grace_s=STOP_GRACE_S)
        self.ui.logTextEdit.appendPlainText(
            _("Stop requested: a checkpoint is saved, then the run exits (killed after {seconds:.0f} s if not).")
            .format(seconds=STOP_GRACE_S))

    def _pollRun(self):
        if self._run is None:
            return
        changed = bool(self._run.poll())
        output = self._run.new_log()
        if output:
            self.ui.logTextEdit.appendPlainText(output.rstrip("\n"))
        if self._trainProcess is not None:
            self._trainProcess.kill_if_overdue()
            code = self._trainProcess.poll()
            if code is not None:
                self._trainProcess = None
                self.ui.logTextEdit.appendPlainText(_("{command} exited with status {code}.").format(
                    command=f"gvsl {self.logic.runCommand}", code=code))
                if self._run.progress.state == "running":
                    self._run.progress.state = "failed" if code else "stopped"
                changed = True
        if changed:
            self.updateRunPanel()

    def _updateRunButtons(self):
        """Enable the run buttons and the progress bar; returns the run's progress, or None without a run."""
        run = self._run
        progress = run.progress if run is not None else runs.RunProgress()
        running = self._trainProcess is not None or progress.state == "running"
        hasRun = run is not None and run.exists()
        self.ui.startButton.enabled = run is not None and not hasRun and not running
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = hasRun and not running and progress.state != "finished" and bool(
            run.checkpoints())
        self.ui.progressBar.value = int(round(100 * progress.fraction))
        if run is None:
            self.ui.progressLabel.text = _("Choose an output folder.")
            return None
        return progress

    @staticmethod
    def _progressText(progress, details=()):
        """State, iteration, the widget's ``details`` and, while running, the ETA, for the progress label."""
        if progress.iterations:
            iteration = _("iteration {iteration} of {iterations}").format(iteration=progress.iteration,
                                                                          iterations=progress.iterations)
        else:
            iteration = _("iteration {iteration}").format(iteration=progress.iteration)
        parts = [progress.message or progress.state, iteration, *details]
        if progress.eta_s is not None and progress.state == "running":
            parts.append(_("ETA {duration}").format(duration=runs.format_duration(progress.eta_s)))
        return ", ".join(parts)

    def _showChartOnce(self, chart):
        """Put the run's chart in the layout the first time it has data (later, the user's layout stays)."""
        if not self._chartShown:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            self._chartShown = True


#
# Logic
#


class GVSLLogicBase(ScriptedLoadableModuleLogic):
    """What both logics do: install the backend, make work folders, resume a run of their ``gvsl`` command.

    No Qt widgets, no torch.
    """

    def __init__(self, runCommand):
        ScriptedLoadableModuleLogic.__init__(self)
        self.runCommand = runCommand  # the gvsl command of this module's runs

    @staticmethod
    def _moduleDir():
        """The folder holding the modules and this package (qt-scripted-modules when installed)."""
        return pathlib.Path(__file__).parents[1]

    @staticmethod
    def missingBackendPackages():
        """What still has to be installed (empty when ``gvsl`` and its requirements are there)."""
        return dependencies.install_plan(GVSLLogicBase._moduleDir()).packages

    @staticmethod
    def installBackend():
        """pip-install what ``dependencies.install_plan`` lists, with Slicer's own packages pinned."""
        plan = dependencies.install_plan(GVSLLogicBase._moduleDir())
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write(dependencies.pins_of_provided())
        try:
            for arguments in plan.pip_arguments(constraints.name):
                slicer.util.pip_install(arguments)
        finally:
            os.remove(constraints.name)

    @staticmethod
    def _workFolder(kind):
        folder = pathlib.Path(slicer.app.temporaryPath) / "GVSL" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def resumeRun(self, runFolder):
        """``gvsl COMMAND --resume RUN_DIR`` in the background (COMMAND: ``runCommand``)."""
        command = runs.resume_command(runFolder, self.runCommand)
        return runs.BackgroundProcess(command, pathlib.Path(runFolder) / runs.PROCESS_LOG_NAME)


#
# Test
#


def runPipelineCheck(testCase, check, name):
    """Run a ``pipeline_check`` function (``check(scene, folder, tick)``) in Slicer's scene for a module self-test;
    the test is skipped, saying why, where the backend or its sample data is not installed.

    The work folder is ``<Slicer temporary folder>/GVSL/self-test-<name>`` (emptied first); the GUI stays
    responsive while the background processes run.
    """
    missing = GVSLLogicBase.missingBackendPackages()
    if missing:
        testCase.skipTest(f"the GVSL backend is not installed (missing: {', '.join(missing)}); "
                          "install it from the module's panel first")
    folder = pathlib.Path(slicer.app.temporaryPath) / "GVSL" / f"self-test-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        return check(slicer.mrmlScene, folder, slicer.app.processEvents)
    except pipeline_check.SampleDataUnavailable as exc:
        testCase.skipTest(f"no sample data: {exc} (pip install nilearn)")
