"""What GVSLPretrain's and GVSLSegment's Widget, Logic and Test classes have in common.

``RunControlMixin`` (Start/Stop/Resume of a ``gvsl`` run folder, reconnecting to it later), ``ensureBackend``
(torch and the backend, installed on a user action after confirmation), ``GVSLLogicBase`` (the backend's
installation, work folders, resuming a run) and ``runPipelineCheck`` (a self-test's body in Slicer's scene).
Unlike the rest of ``GVSLSharedLib`` this file imports Qt and Slicer's scripted-module classes: only the modules
import it. Each module passes its own settings key and ``gvsl`` command; nothing here defaults to either module's.
"""
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import dependencies, devices, jobs, pipeline_check, runs, samples

POLL_INTERVAL_MS = 1000  # the widgets' timer: non-blocking checks of their background processes
STOP_GRACE_S = 120.0
WORK_ROOT_NAME = "GVSL"  # the jobs' work folders, in Slicer's temporary folder
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


def ensureBackend(logic, extra=()):
    """torch (PyTorch extension) and the gvsl backend at the versions it needs, with the ``extra`` requirements of the
    action (e.g. the sample data's), installed on this user action after one confirmation that lists everything
    (nothing is written before it); asks to restart Slicer when a package its process has loaded was replaced. True
    when the backend can run."""
    try:
        plan = logic.installPlan(extra)
    except RuntimeError as exc:  # the extension was installed without its backend folder
        slicer.util.errorDisplay(str(exc))
        return False
    if plan.unfixable:
        slicer.util.errorDisplay(
            _("This Slicer's own Python packages are outside the versions GVSL needs; use a newer Slicer:") + "\n\n"
            + "\n".join(problem.describe() for problem in plan.unfixable))
        return False
    lines = plan.confirmation_lines()
    if not lines:
        return True
    if plan.torch is not None and importlib.util.find_spec("PyTorchUtils") is None:
        slicer.util.errorDisplay(_("GVSL needs the PyTorch extension: install it with the Extensions Manager."))
        return False
    if not slicer.util.confirmOkCancelDisplay(
            _("GVSL will install these Python packages into Slicer's Python (Slicer's own numpy, SimpleITK and VTK "
              "are kept):") + "\n\n" + "\n".join(lines)):
        return False
    restart = plan.restart_needed(sys.modules)
    with slicer.util.tryWithErrorDisplay(_("Installing the GVSL backend failed."), waitCursor=True):
        logic.installBackend(plan)
    if restart and slicer.util.confirmOkCancelDisplay(
            _("Slicer must restart to use the new versions of {packages}. Restart now?").format(
                packages=", ".join(restart))):
        slicer.util.restart()
    return True


class JobControl:
    """One kind of short background job in a panel (``jobs.Job``): its start buttons disabled and its Cancel button
    enabled while it runs, an indeterminate progress bar and the elapsed time in its status label, polled by the
    widget's timer. ``onSuccess(job)`` shows the outputs; the work folder is removed then, unless it returns True
    (the outputs are still needed); a failed job's folder is kept and named in the label."""

    def __init__(self, what, startButtons, cancelButton, statusLabel, onSuccess, progressBar=None,
                 onChange=None):
        self.what = what
        self.startButtons = list(startButtons)
        self.cancelButton = cancelButton
        self.statusLabel = statusLabel
        self.progressBar = progressBar
        self.onSuccess = onSuccess
        self.onChange = onChange  # called when the job starts or ends (e.g. to update the widget's buttons)
        self.job = None
        self.cancelButton.connect("clicked(bool)", self.cancel)
        if progressBar is not None:
            progressBar.visible = False

    @property
    def running(self):
        return self.job is not None

    def start(self, job):
        self.job = job
        self._show(True)
        self.statusLabel.text = job.running_text(self.what)

    def poll(self):
        if self.job is None:
            return
        job = self.job
        code = job.poll()
        if code is None:
            self.statusLabel.text = job.running_text(self.what)
            return
        self.job = None
        self._show(False)
        if code != 0:
            self.statusLabel.text = job.failure(self.what, code)
            return
        keep = False
        with slicer.util.tryWithErrorDisplay(_("Could not show the result of {what}.").format(what=self.what),
                                             waitCursor=True):
            keep = self.onSuccess(job)
        if not keep:
            job.discard()

    def cancel(self, _checked=None):
        if self.job is None:
            return
        self.job.cancel()
        self.job = None
        self._show(False)
        self.statusLabel.text = _("{what} cancelled.").format(what=self.what)

    def _show(self, running):
        for button in self.startButtons:
            button.enabled = not running
        self.cancelButton.enabled = running
        if self.progressBar is not None:
            self.progressBar.visible = running
        if self.onChange is not None:
            self.onChange()


class DeviceChoice:
    """The device combo box: "auto" and the CPU at first, then what torch reports (asked in its own process, never in
    Slicer's) once torch is installed; its choice is the parameter node's ``device``."""

    def __init__(self, comboBox, logic, parameterNode):
        self.comboBox = comboBox
        self.logic = logic
        self.parameterNode = parameterNode  # a callable returning the current parameter node
        self.job = None
        self.answered = False  # torch has reported its devices
        self._fill(devices.BASIC_CHOICES)
        comboBox.connect("currentIndexChanged(int)", self.onChosen)

    def query(self):
        """Ask torch for the devices in the background, once it is installed (called from the widget's timer, so
        torch installed later by the backend check is asked too); one query at a time, none once answered."""
        if not self.answered and self.job is None and dependencies.installed_version(dependencies.TORCH) is not None:
            self.job = devices.start_device_query(self.logic.workFolder("devices"))

    def poll(self):
        if self.job is None or self.job.poll() is None:
            return
        job, self.job = self.job, None
        self.answered = True  # a failed query (a broken torch) is not repeated every second
        if job.poll() == 0:
            self._fill(devices.device_choices(job.answer.read_text(encoding="utf-8")))
        job.discard()

    def cancel(self):
        """End a running query (the widget is closing); its folder goes."""
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def show(self, device):
        """Select ``device`` (added when torch has not reported it, e.g. a saved scene's)."""
        index = self.comboBox.findData(device or devices.AUTO)
        if index < 0:
            self.comboBox.addItem(device, device)
            index = self.comboBox.count - 1
        self.comboBox.currentIndex = index

    def onChosen(self, index):
        node = self.parameterNode()
        if node is not None and index >= 0:
            node.device = self.comboBox.itemData(index)

    def _fill(self, choices):
        node = self.parameterNode()
        wanted = node.device if node is not None else devices.AUTO
        self.comboBox.blockSignals(True)
        self.comboBox.clear()
        for value, text in choices:
            self.comboBox.addItem(text, value)
        self.comboBox.blockSignals(False)
        self.show(wanted)


def registerSampleData(iconPath, logic):
    """Offer the GVSL samples in Slicer's Sample Data module (category "GVSL"): each entry checks the backend and the
    sample data's packages (``ensureBackend``), then writes its sample and loads it (``logic.writeAndLoadSample``)."""
    import SampleData

    def load(kind):
        return logic.writeAndLoadSample(kind) if ensureBackend(logic, samples.SAMPLE_REQUIREMENTS) else []

    for sample in samples.SAMPLES:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="GVSL", sampleName=sample.name, uris=[], fileNames=[], nodeNames=[],
            thumbnailFileName=iconPath, customDownloader=lambda _source, kind=sample.kind: load(kind))


class RunControlMixin:
    """Start/Stop/Resume plumbing shared by the widgets that follow a ``gvsl`` run folder.

    The widget calls ``RunControlMixin.__init__`` with its QSettings key for the last run folder and the run's name
    for messages, and provides ``self.ui`` (startButton, stopButton, resumeButton, progressBar, progressLabel,
    logTextEdit, runFolderPathLineEdit, sampleComboBox), ``_deviceChoice`` (a ``DeviceChoice``), ``_sampleControl``
    (the ``JobControl`` of the sample job), ``self.logic`` (a ``GVSLLogicBase``: its ``runCommand`` is the run's
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
        """The module's parameter node, its run folder defaulting to the last one used (reconnect), and its device
        shown in the device box."""
        self.setParameterNode(self.logic.getParameterNode())
        if pathOrNone(self._parameterNode.runFolder) is None:
            last = qt.QSettings().value(self.lastRunSetting)
            if last:
                self._parameterNode.runFolder = pathlib.Path(last)
        self.onRunFolderChanged()
        self._deviceChoice.show(self._parameterNode.device)

    def onLoadSample(self, _checked=None):
        """Write the sample chosen in ``ui.sampleComboBox`` in a background job (``_sampleControl``), after the one
        confirmation of the packages it needs."""
        with slicer.util.tryWithErrorDisplay(_("Could not write the sample."), waitCursor=True):
            if not ensureBackend(self.logic, samples.SAMPLE_REQUIREMENTS):
                return
            self._sampleControl.start(self.logic.startSample(self.ui.sampleComboBox.currentData))

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

    def _updateRunButtons(self, inputsReady=True):
        """Enable the run buttons (Start only when ``inputsReady``: the widget's training data is chosen) and the
        progress bar; returns the run's progress, or None without a run."""
        run = self._run
        progress = run.progress if run is not None else runs.RunProgress()
        running = self._trainProcess is not None or progress.state == "running"
        hasRun = run is not None and run.exists()
        self.ui.startButton.enabled = inputsReady and run is not None and not hasRun and not running
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
    def installPlan(extra=()):
        """What the backend (and the ``extra`` requirements) still need (``dependencies.InstallPlan``), found without
        importing or writing anything."""
        return dependencies.install_plan(GVSLLogicBase._moduleDir(), extra)

    @staticmethod
    def backendProblems():
        """What is missing or out of range, a line each (empty when the backend can run)."""
        plan = GVSLLogicBase.installPlan()
        return [problem.describe() for problem in plan.problems] + ([plan.backend] if plan.backend else [])

    @staticmethod
    def installBackend(plan):
        """Install what ``plan`` lists: torch through the PyTorch extension with its version range, then the other
        requirements with pip, Slicer's own packages pinned (the pins file is written only now)."""
        if plan.torch is not None:
            import PyTorchUtils

            installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=dependencies.version_range(plan.torch.requirement))
            if installed is None:
                raise RuntimeError(_("The PyTorch extension could not install {requirement}.").format(
                    requirement=plan.torch.requirement))
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write(dependencies.pins_of_provided())
        try:
            for arguments in plan.pip_arguments(constraints.name):
                slicer.util.pip_install(arguments)
        finally:
            os.remove(constraints.name)

    @staticmethod
    def workFolder(kind):
        """A new work folder for one job (``jobs.new_work_folder``) under Slicer's temporary folder."""
        return jobs.new_work_folder(pathlib.Path(slicer.app.temporaryPath) / WORK_ROOT_NAME, kind)

    def startSample(self, kind):
        """Write the sample ``kind`` (``samples.SAMPLES``) in the background; returns the job."""
        return samples.start_sample(self.workFolder("sample"), kind)

    @staticmethod
    def loadSample(job):
        """Put a written sample into the scene (``samples.load_sample``)."""
        return samples.load_sample(slicer.mrmlScene, job.folder, job.kind)

    def writeAndLoadSample(self, kind):
        """Write the sample ``kind`` and load it, waiting with Slicer kept responsive (for Slicer's Sample Data
        module); returns the loaded volume and segmentation nodes."""
        job = self.startSample(kind)
        pipeline_check.run_to_end(job.process, _("writing the GVSL sample"), slicer.app.processEvents)
        loaded = self.loadSample(job)
        job.discard()
        return [*loaded.volumes, loaded.segmentation]

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
    missing = GVSLLogicBase.backendProblems()
    if missing:
        testCase.skipTest(f"the GVSL backend is not installed (missing: {', '.join(missing)}); "
                          "install it from the module's panel first")
    folder = pathlib.Path(slicer.app.temporaryPath) / WORK_ROOT_NAME / f"self-test-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        return check(slicer.mrmlScene, folder, slicer.app.processEvents)
    except pipeline_check.SampleDataUnavailable as exc:
        testCase.skipTest(f"no sample data: {exc} (pip install nilearn)")
