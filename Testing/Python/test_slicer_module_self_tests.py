"""The modules' own self-tests (``GVSLPretrainTest``, ``GVSLSegmentTest``: what Slicer's "Reload and Test" and the
extension build's ``ctest`` run), executed here against a real ``slicer-core`` MRML scene with the real backend.

``slicer-core`` has MRML, the module logics and ``slicer.util`` but not Slicer's application: Qt, the
``ScriptedLoadableModule`` base classes, the parameter node wrapper, ``slicer.i18n`` and ``slicer.app``. The fixture
below stands in for exactly those (the Test classes use only ``delayDisplay``, ``slicer.app.temporaryPath`` and
``processEvents``; widgets are not built), so the Test classes' own code runs as written: the pipeline check in
background processes (sample heads from the MNI152 template in the nilearn wheel → pre-training → matches →
fine-tuning → segmentation), then their assertions on the scene. The scene afterwards is checked further here.
"""
from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("GVSLPretrain", "GVSLSegment")
SHARED = "GVSLShared"  # the folder of GVSLSharedLib, installed beside the modules
IMPORTED_WITH_STAND_INS = (*MODULES, "GVSLSharedLib.module_base")  # imported afresh with each scene's stand-ins


@pytest.fixture
def slicer_application(scene, tmp_path, monkeypatch):
    """Import both modules as Slicer would, with ``scene`` as ``slicer.mrmlScene``; yields ``slicer``."""
    import slicer

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            displayed.append(message)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            return scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    displayed: list[str] = []
    base.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    base.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    base.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    base.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: (lambda node: node)
    wrapper.Choice = wrapper.Decimals = wrapper.WithinRange = lambda *args, **kwargs: None
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text  # Slicer's translation without a translation installed
    for name, module in (("slicer.ScriptedLoadableModule", base), ("slicer.parameterNodeWrapper", wrapper),
                         ("slicer.i18n", i18n), ("qt", mock.MagicMock(name="qt"))):
        monkeypatch.setitem(sys.modules, name, module)
    ticks = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path),
                                                             processEvents=lambda: ticks.append(1)), raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **layers: None)
    for folder in (*MODULES, SHARED):
        monkeypatch.syspath_prepend(str(ROOT / folder))
    forget(IMPORTED_WITH_STAND_INS)
    slicer.displayed, slicer.ticks = displayed, ticks
    yield slicer
    forget(IMPORTED_WITH_STAND_INS)


def forget(names) -> None:
    """Drop the modules ``names`` (and a submodule's name in its package), so that the next import runs them again."""
    for name in names:
        sys.modules.pop(name, None)
        package, _, attribute = name.rpartition(".")
        if package in sys.modules:
            vars(sys.modules[package]).pop(attribute, None)


def run_test_case(case: type[unittest.TestCase], last: str) -> unittest.TestResult:
    """Every test of ``case`` as Slicer's test runner loads them, the one called ``last`` last (each test's setUp
    clears the scene, so the scene afterwards is the one ``last`` left)."""
    names = unittest.defaultTestLoader.getTestCaseNames(case)
    result = unittest.TestResult()
    unittest.TestSuite([case(name) for name in sorted(names, key=lambda name: name == last)]).run(result)
    return result


def assert_passed(result: unittest.TestResult, tests: int) -> None:
    problems = [f"{test.id()}:\n{trace}" for test, trace in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    assert result.testsRun == tests and not result.skipped, result.skipped


def test_pretrain_module_self_test(slicer_application):
    import GVSLPretrain
    result = run_test_case(GVSLPretrain.GVSLPretrainTest, last="test_pretrain_and_match")
    assert_passed(result, tests=3)
    assert slicer_application.ticks, "Slicer's event loop was never served while the processes ran"
    assert any(message.startswith("Pre-training and matching OK") for message in slicer_application.displayed)


def test_segment_module_self_test_and_the_scene_it_leaves(slicer_application, monkeypatch):
    import GVSLSharedLib.volumes as volumes
    from GVSLSegmentLib import finetuning, pipeline_check
    from GVSLSharedLib import runs

    import GVSLSegment
    from gvsl.sample_data import TISSUES
    outputs = []
    check = pipeline_check.check_finetune_and_segment
    monkeypatch.setattr(GVSLSegment.pipeline_check, "check_finetune_and_segment",
                        lambda *args: outputs.append(check(*args)) or outputs[-1])
    assert_passed(run_test_case(GVSLSegment.GVSLSegmentTest, last="test_finetune_and_segment"), tests=3)
    out, scene = outputs[0], slicer_application.mrmlScene

    names = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    assert {"GVSL match deformable", "GVSL match affine", "GVSL match warped moving", "GVSL match checkerboard",
            "GVSL check fixed head", "GVSL check target head segmentation"} <= names
    # the warped moving volume lies on the fixed grid, with the moving head's intensities
    fixed = volumes.image_from_volume_node(out["fixed"])
    warped = volumes.image_from_volume_node(out["warped"])
    assert warped.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(warped.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    moving = sitk.GetArrayFromImage(volumes.image_from_volume_node(out["moving"]))
    assert 0 < sitk.GetArrayFromImage(warped).max() <= moving.max() + 1e-3
    assert np.isfinite([out["metrics"]["ncc_before"], out["metrics"]["ncc_after"]]).all()
    # fine-tuning is followed through its event file as the module follows it: per-class Dice curves
    run = runs.RunFolder(out["run"])
    run.poll()
    assert {f"Dice {name}" for name in TISSUES.values()} <= set(finetuning.split_curves(run.progress.curves)[1])
    # the segmentation of the target head carries the training segments' names
    segmentation = out["segmentation"].GetSegmentation()
    assert sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())) == \
        sorted(TISSUES.values())


def test_self_tests_skip_and_say_why_without_the_backend(slicer_application, monkeypatch):
    from GVSLSharedLib import module_base

    import GVSLPretrain
    import GVSLSegment
    monkeypatch.setattr(module_base.GVSLLogicBase, "backendProblems", staticmethod(lambda: ["gvsl"]))
    for case, test in ((GVSLPretrain.GVSLPretrainTest, "test_pretrain_and_match"),
                       (GVSLSegment.GVSLSegmentTest, "test_finetune_and_segment")):
        result = unittest.TestResult()
        case(test).run(result)
        assert [reason for _, reason in result.skipped] == [
            "the GVSL backend is not installed (missing: gvsl); install it from the module's panel first"]


def test_resume_runs_each_modules_command(slicer_application, tmp_path):
    """The widgets' shared Resume asks the logic's ``resumeRun``: ``gvsl pretrain --resume`` for GVSLPretrain,
    ``gvsl finetune --resume`` for GVSLSegment; resuming a folder without a run fails with the backend's message."""
    from GVSLSharedLib import runs

    import GVSLPretrain
    import GVSLSegment
    for logic, command in ((GVSLPretrain.GVSLPretrainLogic(), "pretrain"),
                           (GVSLSegment.GVSLSegmentLogic(), "finetune")):
        folder = tmp_path / command
        folder.mkdir()
        process = logic.resumeRun(folder)
        assert process.command[1:5] == ["-m", "gvsl", command, "--resume"]
        process.process.wait(timeout=120)
        assert process.poll() == 1
        assert f"gvsl {command}: error:" in (folder / runs.PROCESS_LOG_NAME).read_text()


def test_each_module_logic_loads_the_sample_and_matches_without_a_checkpoint(slicer_application, tmp_path):
    """The modules' own Logic classes, as their panels call them: Load sample (heads), then GVSLPretrain's Compute
    matches and GVSLSegment's Segment by matching with no checkpoint; the atlas's tissues arrive on the other head as
    a segmentation with the atlas's segment names and colours; each job's work folder is its own and goes once its
    outputs are in the scene."""
    from GVSLSegmentLib import results
    from GVSLSharedLib import match, pipeline_check, samples

    import GVSLPretrain
    import GVSLSegment
    from gvsl.sample_data import TISSUES

    def colours(node):
        segmentation = node.GetSegmentation()
        return {segmentation.GetNthSegment(i).GetName(): tuple(segmentation.GetNthSegment(i).GetColor())
                for i in range(segmentation.GetNumberOfSegments())}

    pretrain, segment = GVSLPretrain.GVSLPretrainLogic(), GVSLSegment.GVSLSegmentLogic()
    job = segment.startSample(samples.HEADS)
    pipeline_check.run_to_end(job.process, "writing the sample")
    loaded = segment.loadSample(job)
    job.discard()
    assert set(colours(loaded.segmentation)) == set(TISSUES.values())

    matched = pretrain.startMatch(loaded.target, loaded.atlas, None, "cpu")
    carried = segment.startSegmentationByMatching(loaded.target, loaded.atlas, loaded.segmentation, None, "cpu")
    assert matched.folder != carried.folder and matched.folder.parent == carried.folder.parent
    for running in (matched, carried):
        pipeline_check.run_to_end(running.process, "gvsl match")
    shown = match.load_match_outputs(matched.outDir)
    propagated = match.propagate_segmentation(slicer_application.mrmlScene, loaded.segmentation, loaded.atlas,
                                              loaded.target, shown.transform)
    output = results.segmentation_of_job(slicer_application.mrmlScene, carried, name="carried")
    assert colours(propagated) == colours(output) == colours(loaded.segmentation)
    for finished in (matched, carried):
        finished.discard()
    assert list(matched.folder.parent.iterdir()) == []


class FakeWidget(types.SimpleNamespace):
    """A Qt widget as the panels use it: properties as attributes, ``connect(signal, slot)``."""

    def connect(self, signal, slot):
        self.slots = {**getattr(self, "slots", {}), signal: slot}


class FakeComboBox(FakeWidget):
    def __init__(self):
        super().__init__(items=[], currentIndex=-1)

    count = property(lambda self: len(self.items))

    def addItem(self, text, data):
        self.items.append((text, data))

    def clear(self):
        self.items.clear()

    def findData(self, data):
        return next((i for i, (_, value) in enumerate(self.items) if value == data), -1)

    def itemData(self, index):
        return self.items[index][1]

    def blockSignals(self, block):
        pass


def test_a_panels_job_control_shows_progress_cancels_and_keeps_only_failed_folders(slicer_application, tmp_path,
                                                                                    monkeypatch):
    """What the panels' buttons do with a short job: Start disables its buttons and enables Cancel with a busy bar;
    Cancel ends the process tree at once and removes the folder; a success shows the outputs and removes the folder; a
    failure keeps it and names it."""
    from GVSLSharedLib import jobs, module_base, runs

    for cursor in ("setOverrideCursor", "restoreOverrideCursor"):  # the wait cursor while outputs are shown
        monkeypatch.setattr(slicer_application.app, cursor, lambda *args: None, raising=False)

    start, cancel, label, bar = FakeWidget(enabled=True), FakeWidget(enabled=False), FakeWidget(text=""), FakeWidget()
    shown = []
    control = module_base.JobControl("Matching", [start], cancel, label, lambda job: shown.append(job), bar)
    assert bar.visible is False and "clicked(bool)" in cancel.slots

    def job(code: str):
        folder = jobs.new_work_folder(tmp_path, "match")
        return jobs.Job(runs.BackgroundProcess([sys.executable, "-c", code], folder / "job.log"), folder)

    running = job("import time; time.sleep(60)")
    control.start(running)
    assert (start.enabled, cancel.enabled, bar.visible, control.running) == (False, True, True, True)
    assert label.text.startswith("Matching… ")
    cancel.slots["clicked(bool)"](False)
    assert running.poll() is not None and not running.folder.exists()
    assert (start.enabled, cancel.enabled, bar.visible, label.text) == (True, False, False, "Matching cancelled.")

    for code, succeeds in (("print('ok')", True), ("raise SystemExit('broken input')", False)):
        finished = job(code)
        control.start(finished)
        while control.running:
            control.poll()
        assert finished.folder.exists() != succeeds
        assert (shown[-1:] == [finished]) == succeeds
    assert str(finished.folder) in label.text and "broken input" in label.text


def test_the_device_choice_lists_what_torch_reports_and_sets_the_parameter(slicer_application, tmp_path):
    from GVSLSharedLib import devices, module_base

    node = types.SimpleNamespace(device="cuda:1")
    logic = types.SimpleNamespace(workFolder=lambda kind: tmp_path / kind)
    combo = FakeComboBox()
    choice = module_base.DeviceChoice(combo, logic, lambda: node)
    assert [value for _, value in combo.items] == ["auto", "cpu", "cuda:1"]  # a saved choice stays shown
    choice.query()
    while choice.job is not None:
        choice.poll()
    choice.query()
    assert choice.answered and choice.job is None  # asked once
    import torch

    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert [value for _, value in combo.items][:2 + len(gpus)] == ["auto", "cpu", *gpus]
    assert not (tmp_path / "devices").exists()
    combo.slots["currentIndexChanged(int)"](combo.findData("cpu"))
    assert node.device == "cpu"
    assert devices.device_choices('{"cuda": ["H100"], "mps": false}')[2] == ("cuda:0", "GPU 0: H100")


def test_the_backend_is_installed_after_one_confirmation_and_a_restart_is_asked_when_needed(slicer_application,
                                                                                          monkeypatch):
    """ensureBackend: Slicer's own package out of range stops with an error and installs nothing; otherwise one
    dialog lists everything and nothing is installed before it is accepted; a replaced package that Slicer's process
    has loaded brings the restart question."""
    from GVSLSharedLib import dependencies, module_base

    asked, errors, installed, restarted = [], [], [], []
    answers = iter([False, True, True])
    monkeypatch.setattr(slicer_application.util, "confirmOkCancelDisplay",
                        lambda text: asked.append(text) or next(answers))
    monkeypatch.setattr(slicer_application.util, "errorDisplay", lambda text: errors.append(text))
    monkeypatch.setattr(slicer_application.util, "restart", lambda: restarted.append(True), raising=False)
    for cursor in ("setOverrideCursor", "restoreOverrideCursor"):
        monkeypatch.setattr(slicer_application.app, cursor, lambda *args: None, raising=False)
    plans = {"slicer": dependencies.InstallPlan(None, [dependencies.Problem("SimpleITK>=9", "2.5.7")]),
             "pip": dependencies.InstallPlan(None, [dependencies.Problem("monai>=9", "1.6.1"),
                                                    dependencies.Problem("pydicom>=2.4", None)])}
    logic = types.SimpleNamespace(installBackend=installed.append)
    logic.installPlan = lambda extra: plans[logic.case]
    monkeypatch.setattr(dependencies.InstallPlan, "restart_needed", lambda self, loaded: ["monai"])

    logic.case = "slicer"
    assert module_base.ensureBackend(logic) is False
    assert "SimpleITK>=9 (installed: 2.5.7)" in errors[-1] and asked == [] and installed == []
    logic.case = "pip"
    assert module_base.ensureBackend(logic) is False  # declined: nothing installed
    assert "monai>=9 (installed: 1.6.1)\npydicom>=2.4 (not installed)" in asked[-1] and installed == []
    assert module_base.ensureBackend(logic) is True
    assert installed == [plans["pip"]] and "restart" in asked[-1] and restarted == [True]


def test_the_sample_data_module_entry_writes_loads_and_leaves_no_folder(slicer_application, tmp_path):
    from GVSLSharedLib import samples

    import GVSLPretrain
    nodes = GVSLPretrain.GVSLPretrainLogic().writeAndLoadSample(samples.BRAIN)
    assert [node.GetClassName() for node in nodes] == ["vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"]
    assert nodes[1].GetSegmentation().GetNumberOfSegments() == 14
    assert list((tmp_path / "GVSL").iterdir()) == []
