"""GVSLPretrain's logic (``GVSLPretrainLib`` and the shared ``GVSLSharedLib``) against a real MRML scene from the
``slicer-core`` wheel.

MRML tests skip when ``slicer`` with ``vtkMRMLScene`` is not importable; the run-folder, process and command-line
tests need only the backend.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLShared"), str(ROOT / "GVSLPretrain")]

from GVSLPretrainLib import dicom_selection  # noqa: E402  (imports no slicer)
from GVSLSharedLib import runs  # noqa: E402  (imports no slicer)


def oblique_image(size=(7, 6, 5), pixel=sitk.sitkFloat32, seed=0) -> sitk.Image:
    """A small image with non-trivial spacing, origin and an oblique direction (LPS)."""
    rng = np.random.default_rng(seed)
    array = rng.normal(size=size[::-1]) * 100
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.3, -0.2, 0.5)
    image.SetDirection(rotation.GetMatrix())
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetOrigin((10.5, -3.2, 7.7))
    return image


def ijk_to_ras(node) -> np.ndarray:
    import vtk
    from GVSLSharedLib.volumes import numpy_from_vtk_matrix
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return numpy_from_vtk_matrix(matrix)


# Volumes


@pytest.mark.parametrize("pixel", [sitk.sitkFloat32, sitk.sitkInt16, sitk.sitkUInt8])
def test_volume_round_trip_keeps_geometry_exactly(scene, pixel):
    from GVSLSharedLib import volumes
    image = oblique_image(pixel=pixel)
    node = volumes.add_volume_node(scene, image, "volume")
    matrix = ijk_to_ras(node)
    # Each voxel's RAS position is its SimpleITK (LPS) physical point with x and y negated.
    for index in [(0, 0, 0), (6, 0, 0), (0, 5, 4), (6, 5, 4), (3, 2, 1)]:
        point_ras = matrix @ np.array([*index, 1.0])
        expected_ras = volumes.flip_lps_ras(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(point_ras[:3], expected_ras, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(matrix, volumes.ijk_to_ras_from_image(image))

    back = volumes.image_from_volume_node(node)
    assert back.GetPixelID() == image.GetPixelID()
    assert back.GetSize() == image.GetSize()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # And back into a second node: the IJK-to-RAS matrix is identical to the first node's.
    np.testing.assert_array_equal(ijk_to_ras(volumes.add_volume_node(scene, back, "copy")), matrix)


def test_image_from_a_node_with_slicer_geometry(scene):
    from GVSLSharedLib import volumes
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    node.SetAndObserveImageData(volumes.image_data_from_array(np.arange(60, dtype=np.int16).reshape(3, 4, 5)))
    node.SetIJKToRASDirections(-1, 0, 0, 0, 0, 1, 0, -1, 0)  # a coronal acquisition
    node.SetSpacing(0.5, 0.8, 3.0)
    node.SetOrigin(12.0, -40.0, 7.5)
    image = volumes.image_from_volume_node(node)
    assert sitk.GetArrayFromImage(image)[2, 3, 4] == 59  # [k, j, i] on both sides
    point_lps = image.TransformIndexToPhysicalPoint((4, 3, 2))
    np.testing.assert_allclose(volumes.flip_lps_ras(point_lps), (ijk_to_ras(node) @ [4, 3, 2, 1])[:3], atol=1e-12)


# Transforms


def match_like(order: str) -> SimpleNamespace:
    """A MatchResult stand-in: an affine and an oblique displacement field, composed in ``order`` ("affine after
    deformable" as gvsl.match builds it, or the reverse)."""
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.05, 0.1, 0.0, -0.05, 0.95, 0.02, 0.0, 0.03, 1.1))
    affine.SetTranslation((3.0, -2.0, 4.0))
    affine.SetCenter((1.0, 2.0, 3.0))
    grid = oblique_image(size=(20, 18, 16))
    rng = np.random.default_rng(1)
    field = sitk.GetImageFromArray(rng.normal(size=(16, 18, 20, 3)) * 2.0, isVector=True)
    field.CopyInformation(grid)
    deformable = sitk.DisplacementFieldTransform(sitk.Image(field))
    parts = [affine, deformable] if order == "affine after deformable" else [deformable, affine]
    transform = sitk.CompositeTransform(parts)
    inside = [grid.TransformContinuousIndexToPhysicalPoint(tuple(rng.uniform(2, 12, size=3))) for _ in range(25)]
    return SimpleNamespace(transform=transform, affine=affine, field=field, points_lps=inside)


@pytest.mark.parametrize("order", ["affine after deformable", "deformable after affine"])
def test_grid_transform_nodes_map_points_like_the_match(scene, order):
    from GVSLSharedLib import transforms, volumes
    result = match_like(order)
    nodes = transforms.add_match_transform_nodes(scene, result.transform, "match")
    kinds = [node.GetClassName() for node in nodes]
    assert kinds == (["vtkMRMLGridTransformNode", "vtkMRMLLinearTransformNode"] if order == "affine after deformable"
                     else ["vtkMRMLLinearTransformNode", "vtkMRMLGridTransformNode"])
    assert nodes[1].GetParentTransformNode() is nodes[0]
    for point_lps in result.points_lps:
        expected_lps = np.array(result.transform.TransformPoint(point_lps))
        moved_ras = transforms.transform_point_from_world(nodes[-1], volumes.flip_lps_ras(point_lps))
        np.testing.assert_allclose(volumes.flip_lps_ras(moved_ras), expected_lps, atol=1e-3)


def test_linear_part_is_exact(scene):
    from GVSLSharedLib import transforms, volumes
    result = match_like("affine after deformable")
    (node,) = transforms.add_match_transform_nodes(scene, result.affine)
    for point_lps in result.points_lps:
        moved_ras = transforms.transform_point_from_world(node, volumes.flip_lps_ras(point_lps))
        np.testing.assert_allclose(volumes.flip_lps_ras(moved_ras), result.affine.TransformPoint(point_lps), atol=1e-9)


def test_match_outputs_become_nodes(scene, tmp_path):
    from GVSLSharedLib import match, volumes
    result = match_like("affine after deformable")
    fixed = oblique_image(size=(12, 10, 8))
    moving = oblique_image(size=(12, 10, 8), seed=3)
    sitk.WriteTransform(result.transform, str(tmp_path / match.TRANSFORM_NAME))
    sitk.WriteImage(sitk.Resample(moving, fixed, result.transform), str(tmp_path / match.WARPED_NAME))
    (tmp_path / match.METRICS_NAME).write_text(json.dumps({"ncc_after": 0.5, "conventions": "corrected",
                                                           "network": {"ncc_after": 0.25}}))
    fixed_node = volumes.add_volume_node(scene, fixed, "fixed")

    loaded = match.load_match_outputs(tmp_path)
    assert loaded.network_transform is None  # written only with refinement
    shown = match.show_match(scene, loaded, fixed_node)
    assert match.format_metrics(loaded.metrics) == "ncc_after: 0.5\nconventions: corrected\nnetwork ncc_after: 0.25"
    # The match view says which numbers are the refined answer's and which the network's own.
    assert match.describe_metrics(loaded.metrics) == (
        "After refinement on the pair:\nncc_after: 0.5\nconventions: corrected\n\n"
        "Network alone, before refinement (what the pre-training learned):\nncc_after: 0.25")
    assert match.describe_metrics({"ncc_after": 0.25}) == "Network alone (no refinement):\nncc_after: 0.25"
    for name in ("warped", "checkerboard"):
        np.testing.assert_allclose(ijk_to_ras(shown[name]), ijk_to_ras(fixed_node), atol=1e-9)
    output = shown["transforms"][-1]
    modes = {(d.GetVisibility(), d.GetVisibility2D(), d.GetVisibility3D(), d.GetVisualizationMode())
             for d in (output.GetNthDisplayNode(i) for i in range(output.GetNumberOfDisplayNodes()))}
    display = scene.GetNodesByClass("vtkMRMLTransformDisplayNode").GetItemAsObject(0)
    assert modes == {(1, 1, 0, display.VIS_MODE_GRID), (1, 0, 1, display.VIS_MODE_GLYPH)}

    overlay = match.show_overlay(scene, moving, "similarity")
    assert match.show_overlay(scene, fixed, "similarity") is overlay  # reused, refreshed
    np.testing.assert_array_equal(ijk_to_ras(overlay), volumes.ijk_to_ras_from_image(fixed))
    assert overlay.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeRainbow"


def test_match_inputs_refuse_transformed_volumes(scene, tmp_path):
    from GVSLSharedLib import match, volumes
    fixed = volumes.add_volume_node(scene, oblique_image(), "fixed")
    moving = volumes.add_volume_node(scene, oblique_image(seed=2), "moving")
    fixed_path, _ = match.write_match_inputs(fixed, moving, tmp_path)
    assert sitk.ReadImage(str(fixed_path)).GetDirection() == pytest.approx(oblique_image().GetDirection(), abs=1e-12)
    moving.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    with pytest.raises(ValueError, match="under a transform"):
        match.write_match_inputs(fixed, moving, tmp_path)


def test_segmentation_is_carried_onto_the_fixed_volume(scene):
    from GVSLSharedLib import match, volumes
    moving = sitk.Image((20, 20, 12), sitk.sitkFloat32)
    moving.SetSpacing((1.0, 1.0, 2.0))
    fixed = sitk.Image((24, 22, 14), sitk.sitkFloat32)
    fixed.SetOrigin((-3.0, -2.0, -4.0))
    fixed.SetSpacing((1.0, 1.0, 2.0))
    shift = sitk.TranslationTransform(3, (2.0, 1.0, 2.0))  # fixed point -> moving point, LPS
    labels = np.zeros((12, 20, 20), np.uint8)
    labels[3:6, 4:9, 5:12] = 1
    labels[7:10, 10:15, 10:16] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(moving)
    moving_node = volumes.add_volume_node(scene, moving, "moving")
    fixed_node = volumes.add_volume_node(scene, fixed, "fixed")
    labelmap = volumes.add_volume_node(scene, label_image, "labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    import slicer
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    source = segmentation.GetSegmentation()
    source.GetNthSegment(0).SetName("liver")
    source.GetNthSegment(0).SetColor(0.8, 0.4, 0.2)
    source.GetNthSegment(1).SetName("kidney")

    carried = match.propagate_segmentation(scene, segmentation, moving_node, fixed_node, shift)
    result = carried.GetSegmentation()
    assert [result.GetNthSegment(i).GetName() for i in range(2)] == ["liver", "kidney"]
    assert result.GetNthSegment(0).GetColor() == pytest.approx((0.8, 0.4, 0.2))
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(carried, exported)
    expected = sitk.Resample(label_image, fixed, shift, sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.Resample(volumes.image_from_volume_node(exported), fixed,
                                                                       sitk.Transform(), sitk.sitkNearestNeighbor)),
                                  sitk.GetArrayFromImage(expected))
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 2  # the working one is gone


# Correspondence probe


def test_linked_point_list_follows_the_fixed_list(scene):
    import vtk
    from GVSLPretrainLib import probe
    from GVSLSharedLib import transforms, volumes
    result = match_like("affine after deformable")
    output = transforms.add_match_transform_nodes(scene, result.transform)[-1]
    fixed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "fixed points")
    moving = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "moving points")
    changes = []
    linked = probe.LinkedPointLists(fixed, moving, output, lambda *args: changes.append(args))

    def expected_ras(point_ras):
        return volumes.flip_lps_ras(result.transform.TransformPoint(tuple(volumes.flip_lps_ras(point_ras))))

    points_ras = [volumes.flip_lps_ras(p) for p in result.points_lps[:3]]
    for n, point in enumerate(points_ras):
        fixed.AddControlPoint(*point, f"P{n}")
    assert moving.GetNumberOfControlPoints() == 3 and moving.GetLocked()
    for n, point in enumerate(points_ras):
        np.testing.assert_allclose(moving.GetNthControlPointPositionWorld(n), expected_ras(point), atol=1e-3)
        assert moving.GetNthControlPointLabel(n) == f"P{n}"

    fixed.SetNthControlPointPositionWorld(1, *points_ras[2])  # drag
    np.testing.assert_allclose(moving.GetNthControlPointPositionWorld(1), expected_ras(points_ras[2]), atol=1e-3)
    index, point_fixed, point_moving = changes[-1]
    assert index == 1 and linked.last_index == 1
    np.testing.assert_allclose(point_fixed, points_ras[2], atol=1e-9)
    np.testing.assert_allclose(point_moving, expected_ras(points_ras[2]), atol=1e-3)

    fixed.RemoveNthControlPoint(0)
    assert [moving.GetNthControlPointLabel(n) for n in range(2)] == ["P1", "P2"]

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 0.2)  # small: the points stay inside the displacement field's grid
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    parent.SetMatrixTransformFromParent(shift)
    top = output
    while top.GetParentTransformNode() is not None:
        top = top.GetParentTransformNode()
    top.SetAndObserveTransformNodeID(parent.GetID())  # the transform changes: partners move
    shifted = np.array(fixed.GetNthControlPointPositionWorld(1)) + [0.2, 0.0, 0.0]
    np.testing.assert_allclose(moving.GetNthControlPointPositionWorld(1), expected_ras(shifted), atol=1e-3)

    linked.close()
    fixed.AddControlPoint(0.0, 0.0, 0.0)
    assert moving.GetNumberOfControlPoints() == 2


# Loss chart


def test_loss_chart_has_one_series_per_loss(scene):
    from GVSLSharedLib import plots
    curves = {"loss": [(10, 1.0), (20, 0.8)], "ncc": [(10, 0.4), (20, 0.3)]}
    plots.update_loss_chart(scene, curves, "losses")
    curves["loss"].append((30, 0.7))
    curves["ncc"].append((30, 0.2))
    chart = plots.update_loss_chart(scene, curves, "losses")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    table = scene.GetFirstNodeByName("losses table")
    assert table.GetNumberOfRows() == 3
    assert {chart.GetNthPlotSeriesNode(n).GetYColumnName() for n in range(2)} == {"loss", "ncc"}


# Run folders and processes (no MRML)


def test_names_agree_with_the_backend():
    from gvsl.train import config, events, state, stopping
    assert runs.EVENTS_NAME == events.EVENTS_NAME
    assert runs.STOP_NAME == stopping.STOP_NAME
    assert runs.CHECKPOINT_DIR == state.CHECKPOINT_DIR
    assert runs.CONFIG_NAME == config.CONFIG_NAME


def test_run_folder_follows_the_backend_event_log(tmp_path):
    from gvsl.train.events import EventLog
    run = runs.RunFolder(tmp_path)
    assert not run.exists() and run.poll() == []
    with EventLog(tmp_path / runs.EVENTS_NAME) as log:
        log.write("start", iteration=0, iterations=100, device="cpu")
        log.write("iteration", iteration=10, iterations=100, loss=1.5, ncc=0.7, mse=0.5, smooth=0.3, lr=1e-4,
                  it_per_s=2.0, eta_s=45.0, peak_memory_bytes=0, memory_kind="cpu")
        assert len(run.poll()) == 2
        assert run.progress.state == "running" and run.progress.fraction == pytest.approx(0.1)
        assert run.progress.eta_s == 45.0 and set(run.progress.curves) == {"loss", "ncc", "mse", "smooth"}
        with open(tmp_path / runs.EVENTS_NAME, "a") as file:
            file.write('{"event": "iteration", "iter')  # a line being written is left for the next poll
        assert run.poll() == []
    with open(tmp_path / runs.EVENTS_NAME, "a") as file:
        file.write('ation": 20, "loss": 1.0}\n')
    assert run.poll()[0]["iteration"] == 20 and run.progress.curves["loss"][-1] == (20, 1.0)
    with EventLog(tmp_path / runs.EVENTS_NAME) as log:
        log.write("end", iteration=20, checkpoint="c.pt", stopped=True, elapsed_s=3.0)
    run.poll()
    assert run.progress.state == "stopped" and run.progress.checkpoint == "c.pt" and run.progress.eta_s is None
    run.request_stop()
    assert (tmp_path / runs.STOP_NAME).exists()
    assert runs.RunFolder(tmp_path).poll()[-1]["event"] == "end"  # reconnecting reads the whole history


def test_run_folder_streams_the_process_log(tmp_path):
    run = runs.RunFolder(tmp_path)
    assert run.new_log() == ""
    process = runs.BackgroundProcess([sys.executable, "-c", "print('hello from the run')"],
                                     tmp_path / runs.PROCESS_LOG_NAME)
    process.process.wait(timeout=60)
    assert process.poll() == 0
    text = run.new_log()
    assert text.startswith(f"$ {sys.executable} -c") and "hello from the run" in text
    assert run.new_log() == ""
    assert "hello from the run" in runs.RunFolder(tmp_path).new_log()  # a reconnected panel shows the whole log


def test_error_event_fails_the_run():
    progress = runs.RunProgress()
    progress.add({"event": "error", "iteration": 3, "type": "RuntimeError", "message": "out of memory"})
    assert progress.state == "failed" and "out of memory" in progress.message


def test_commands_parse_with_the_backend_cli(tmp_path):
    from gvsl.cli import build_parser
    parser = build_parser()
    command = runs.pretrain_command(tmp_path / "data", tmp_path / "run", iterations=50, patch=64, batch=1, lr=2e-4,
                                    precision="fp32", device="cpu", init=tmp_path / "init.pt")
    assert command[:3] == [sys.executable, "-m", "gvsl"]
    args = parser.parse_args(command[3:])
    assert (args.iterations, args.batch, args.lr, args.precision, args.device) == (50, 1, 2e-4, "fp32", "cpu")
    assert args.out == str(tmp_path / "run") and args.init == str(tmp_path / "init.pt") and args.progress is False
    assert parser.parse_args(runs.resume_command(tmp_path / "run")[3:]).resume == str(tmp_path / "run")
    automatic = runs.pretrain_command(tmp_path / "data", tmp_path / "run", iterations=50, patch=64,
                                      batch=runs.AUTO_BATCH, lr=2e-4, precision="fp32", device="cpu")
    assert runs.AUTO_BATCH == 0 and parser.parse_args(automatic[3:]).batch == "auto"  # the module's "auto" batch
    scan = parser.parse_args(runs.scan_command(tmp_path, ["MR"])[3:])
    assert scan.json and scan.modality == ["MR"]


def test_match_command_and_files_agree_with_the_backend(scene, tmp_path):
    from GVSLSharedLib import match

    from gvsl.cli import build_parser
    from gvsl.match import RefineConfig
    from gvsl.match import outputs as backend
    assert (match.TRANSFORM_NAME, match.NETWORK_TRANSFORM_NAME, match.WARPED_NAME, match.METRICS_NAME) == (
        backend.TRANSFORM_FILE, backend.NETWORK_TRANSFORM_FILE, backend.WARPED_FILE, backend.METRICS_FILE)
    args = build_parser().parse_args(match.match_command("f.nrrd", "m.nrrd", "c.pt", tmp_path, "cuda:1")[3:])
    assert (args.fixed, args.moving, args.checkpoint, args.out, args.device) == (
        "f.nrrd", "m.nrrd", "c.pt", str(tmp_path), "cuda:1")
    assert args.refine == RefineConfig().iterations and args.initial_alignment is None  # the backend's defaults
    args = build_parser().parse_args(match.match_command("f.nrrd", "m.nrrd", "c.pt", tmp_path, "cpu", refine=0,
                                                         initial_alignment="physical")[3:])
    assert args.refine == 0 and args.initial_alignment == "physical"


def test_stop_kills_the_whole_process_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    process = runs.BackgroundProcess([sys.executable, "-c", script], tmp_path / "log.txt")
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    process.stop(grace_s=0.2)
    assert process.poll() is None and not process.kill_if_overdue()  # polite first: still running
    time.sleep(0.3)
    assert process.kill_if_overdue()
    assert process.poll() is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{grandchild}/status").exists() and "zombie" in Path(f"/proc/{grandchild}/status").read_text():
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild process survived the kill")
    assert "started" in process.new_output()


def test_scan_output_summary(tmp_path):
    from gvsl.io import Geometry, SeriesInfo
    geometry = Geometry((512, 512, 100), (0.7, 0.7, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    records = [SeriesInfo(key="a", kind="dicom", files=["1"] * 100, modality="CT", size_bytes=50_000_000,
                          geometry=geometry),
               SeriesInfo(key="b", kind="dicom", files=["2"] * 90, modality="MR", size_bytes=30_000_000),
               SeriesInfo(key="c", kind="dicom", files=["3"], modality="CT", size_bytes=500_000, usable=False,
                          reason="localizer (1 slice)")]
    summary = dicom_selection.summarize_scan(json.dumps([r.to_dict() for r in records], default=str))
    assert (summary.n_series, summary.n_usable, summary.usable_bytes) == (3, 2, 80_000_000)
    assert summary.modalities == {"CT": 1, "MR": 1} and summary.reasons == {"localizer (1 slice)": 1}
    assert summary.describe().startswith("2 usable of 3 series (1 CT, 1 MR), 80.0 MB")


class FakeDicomDatabase:
    """The ctkDICOMDatabase methods that dicom_selection uses, over an in-memory table."""

    def __init__(self, root: Path):
        self.series = {}  # uid -> (patient, study, modality, files)
        for uid, patient, study, modality, count in [("s1", "p1", "st1", "CT", 3), ("s2", "p1", "st1", "SR", 1),
                                                      ("s3", "p2", "st2", "MR", 2)]:
            files = []
            for n in range(count):
                path = root / f"{uid}_{n}.dcm"
                path.write_bytes(b"DICM")
                files.append(str(path))
            self.series[uid] = (patient, study, modality, files)

    def patients(self):
        return sorted({v[0] for v in self.series.values()})

    def studiesForPatient(self, patient):  # noqa: N802 (ctkDICOMDatabase's names)
        return sorted({v[1] for v in self.series.values() if v[0] == patient})

    def seriesForStudy(self, study):  # noqa: N802
        return [uid for uid, v in self.series.items() if v[1] == study]

    def filesForSeries(self, uid):  # noqa: N802
        return self.series[uid][3]

    def fileValue(self, path, tag):  # noqa: N802
        uid = Path(path).name.split("_")[0]
        return {dicom_selection.MODALITY_TAG: self.series[uid][2]}.get(tag, f"{tag} of {uid}")


def test_database_selection_filters_and_links(tmp_path):
    database = FakeDicomDatabase(tmp_path)
    assert [s.series for s in dicom_selection.database_series(database)] == ["s1", "s3"]
    assert [s.series for s in dicom_selection.database_series(database, ["MR"])] == ["s3"]
    folder = dicom_selection.link_series_files(database, ["s1", "s3"], tmp_path / "selection")
    linked = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.dcm"))
    assert linked == ["series_00000/00000_s1_0.dcm", "series_00000/00001_s1_1.dcm", "series_00000/00002_s1_2.dcm",
                      "series_00001/00000_s3_0.dcm", "series_00001/00001_s3_1.dcm"]
    assert (folder / "series_00001" / "00001_s3_1.dcm").read_bytes() == b"DICM"


def test_similarity_job_peaks_at_the_same_point_of_the_same_scan(scene, tmp_path):
    import subprocess

    import torch
    from GVSLSharedLib import match, volumes

    from gvsl.checkpoints import gvsl_payload, save_checkpoint
    from gvsl.networks import GVSL
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "model.pt", gvsl_payload(GVSL((8, 8, 16, 16, 16, 16, 16, 8, 8)), 0))
    rng = np.random.default_rng(0)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.random((32, 32, 32)).astype(np.float32)), 3.0)
    image.SetSpacing((2.5, 2.5, 2.5))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    point_lps = image.TransformIndexToPhysicalPoint((20, 11, 14))
    command = match.similarity_command(tmp_path / "scan.nrrd", tmp_path / "scan.nrrd", checkpoint, tmp_path / "out",
                                       "cpu", volumes.flip_lps_ras(point_lps))
    command += ["--spacing", "2.5", "2.5", "2.5", "--max-size", "32", "32", "32", "--fixed-modality", "MR",
                "--moving-modality", "MR"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    similarity = match.load_similarity(tmp_path / "out")
    assert similarity.GetSize() == image.GetSize() and similarity.GetSpacing() == image.GetSpacing()
    values = sitk.GetArrayFromImage(similarity)
    assert values.max() <= 1.0 + 1e-5 and values[14, 11, 20] > 0.99


def test_real_gvsl_match_outputs_become_matching_nodes(scene, tmp_path):
    """Volumes from the scene → ``gvsl match`` (the real command, in-process) → transform nodes that map fixed
    points where the written transform does."""
    import torch
    from GVSLSharedLib import match, transforms, volumes

    from gvsl.checkpoints import gvsl_payload, save_checkpoint
    from gvsl.cli import main
    from gvsl.networks import GVSL
    torch.manual_seed(1)
    checkpoint = save_checkpoint(tmp_path / "model.pt", gvsl_payload(GVSL((8, 8, 16, 16, 16, 16, 16, 8, 8)), 0))
    fixed = sitk.SmoothingRecursiveGaussian(oblique_image(size=(30, 26, 22)), 2.0)
    moving = sitk.SmoothingRecursiveGaussian(oblique_image(size=(28, 28, 20), seed=5), 2.0)
    fixed_node = volumes.add_volume_node(scene, fixed, "fixed")
    moving_node = volumes.add_volume_node(scene, moving, "moving")
    fixed_path, moving_path = match.write_match_inputs(fixed_node, moving_node, tmp_path / "inputs")
    command = match.match_command(fixed_path, moving_path, checkpoint, tmp_path / "out", "cpu")
    assert main([*command[3:], "--spacing", "2", "2", "2", "--max-size", "32", "32", "32", "--fixed-modality", "MR",
                 "--moving-modality", "MR"]) == 0

    result = match.load_match_outputs(tmp_path / "out")
    shown = match.show_match(scene, result, fixed_node)
    assert [n.GetClassName() for n in shown["transforms"]] == ["vtkMRMLGridTransformNode",
                                                               "vtkMRMLLinearTransformNode"]
    np.testing.assert_allclose(ijk_to_ras(shown["warped"]), ijk_to_ras(fixed_node), atol=1e-9)
    rng = np.random.default_rng(2)
    for index in rng.uniform(3, 18, size=(20, 3)):
        point_lps = fixed.TransformContinuousIndexToPhysicalPoint(tuple(index))
        moved_ras = transforms.transform_point_from_world(shown["transforms"][-1], volumes.flip_lps_ras(point_lps))
        np.testing.assert_allclose(volumes.flip_lps_ras(moved_ras), result.transform.TransformPoint(point_lps),
                                   atol=1e-3)


def test_real_pretraining_is_followed_stopped_and_resumed(tmp_path):
    """``gvsl pretrain`` started as the module starts it: progress from its event file, Stop by the STOP file (a
    clean exit with a checkpoint), then Resume. Tiny network and volumes on the CPU."""
    from scipy.ndimage import gaussian_filter
    (tmp_path / "volumes").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = sitk.GetImageFromArray(gaussian_filter(rng.random((36, 40, 36)), 3).astype(np.float32) * 1000)
        sitk.WriteImage(image, str(tmp_path / "volumes" / f"vol{i}.nii.gz"))
    tiny = ["--channels", "8,8,16,16,16,16,16,8,8", "--workers", "0", "--no-tensorboard", "--log-every", "1",
            "--checkpoint-every", "1000"]
    run_dir = tmp_path / "run"
    command = runs.pretrain_command(tmp_path / "volumes", run_dir, iterations=10_000, patch=32, batch=1, lr=1e-4,
                                    precision="fp32", device="cpu")
    process = runs.BackgroundProcess(command + tiny, run_dir / runs.PROCESS_LOG_NAME)
    run = runs.RunFolder(run_dir)

    def follow(until, timeout=240):
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            run.poll()
            process.kill_if_overdue()
            time.sleep(0.2)
        run.poll()
        assert until(), run.new_log()

    follow(lambda: run.progress.iteration >= 2)
    assert run.progress.state == "running" and run.progress.iterations == 10_000
    assert {"loss"} <= set(run.progress.curves) and run.progress.eta_s > 0
    run.request_stop()
    process.stop(grace_s=120)
    follow(lambda: process.poll() is not None)
    assert process.poll() == 0 and run.progress.state == "stopped" and run.checkpoints()
    stopped_at = run.progress.iteration

    process = runs.BackgroundProcess(runs.resume_command(run_dir) + ["--iterations", str(stopped_at + 2)],
                                     run_dir / runs.PROCESS_LOG_NAME)
    follow(lambda: process.poll() is not None)
    assert process.poll() == 0 and run.progress.state == "finished"
    assert run.progress.iteration == stopped_at + 2 and run.progress.fraction == 1.0
    assert "gvsl pretrain" in run.new_log()
