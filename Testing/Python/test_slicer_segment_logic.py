"""GVSLSegment's logic (``GVSLSegmentLib``) against a real MRML scene from the ``slicer-core`` wheel.

Real images: the MNI152 2009 T1 template with its grey/white matter maps (nilearn wheel, ``gvsl.sample_data``)
at 6 mm. MRML tests skip when ``slicer`` with ``vtkMRMLScene`` is not importable; the command-line tests need
only the backend.
"""
from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLShared"), str(ROOT / "GVSLSegment")]

from GVSLSegmentLib import finetuning  # noqa: E402  (imports no slicer)
from GVSLSharedLib import runs  # noqa: E402  (imports no slicer)

from gvsl.sample_data import TISSUE_COLORS, TISSUES  # noqa: E402

SPACING_MM = 6.0
GREY, WHITE = TISSUES[1], TISSUES[2]
COLORS = {TISSUES[v]: TISSUE_COLORS[v] for v in TISSUES}


@lru_cache(maxsize=None)
def mni() -> dict[str, sitk.Image]:
    from gvsl.sample_data import load_mni
    return load_mni(SPACING_MM)


def tissue_labels(values=(1, 2)) -> sitk.Image:
    """Grey matter → values[0], white matter → values[1] (``gvsl.sample_data.tissue_labels``), on the MNI grid."""
    from gvsl.sample_data import tissue_labels as grey_1_white_2
    return sitk.ChangeLabel(grey_1_white_2(mni()), {1: values[0], 2: values[1]})


def oblique_grid(reference: sitk.Image, spacing=(5.0, 5.5, 7.0)) -> sitk.Image:
    """An oblique grid with anisotropic voxels covering the reference's centre."""
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.2, -0.15, 0.3)
    grid = sitk.Image([24, 26, 18], sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(rotation.GetMatrix())
    centre = reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()])
    half = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ ((np.asarray(grid.GetSize()) - 1) * spacing / 2)
    grid.SetOrigin(tuple(np.asarray(centre) - half))
    return grid


def segmentation_node(scene, labels: sitk.Image, names_by_value: dict[int, str], node_name: str):
    """A segmentation node made the way a user's would be (import of a label map), with names and colours."""
    import slicer
    from GVSLSharedLib import volumes
    labelmap = volumes.add_volume_node(scene, labels, f"{node_name} labelmap", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    segmentation = node.GetSegmentation()
    for index, value in enumerate(sorted(names_by_value)):
        segment = segmentation.GetNthSegment(index)
        segment.SetName(names_by_value[value])
        segment.SetColor(COLORS[names_by_value[value]])
    return node


def two_cases(scene):
    """Case "MNI head": the template and its tissues on the template grid. Case "MNI head oblique #2": the template
    resampled onto an oblique grid, its segmentation still on the 6 mm grid (so the export resamples it) and its
    segments in the other order."""
    from GVSLSegmentLib.training_data import TrainingCase
    from GVSLSharedLib import volumes
    t1 = mni()["t1"]
    first = TrainingCase(volumes.add_volume_node(scene, t1, "MNI head"),
                         segmentation_node(scene, tissue_labels(), {1: GREY, 2: WHITE}, "MNI tissues"))
    oblique = sitk.Resample(t1, oblique_grid(t1), sitk.Transform(), sitk.sitkLinear, 0.0)
    second = TrainingCase(volumes.add_volume_node(scene, oblique, "MNI head oblique #2"),
                          segmentation_node(scene, tissue_labels((2, 1)), {1: WHITE, 2: GREY}, "oblique tissues"))
    return [first, second]


def assert_same_geometry(image: sitk.Image, reference: sitk.Image, mm=1e-9):
    """Same grid (``mm``: 1e-4 for NIfTI files, whose geometry is float32)."""
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == pytest.approx(reference.GetSpacing(), abs=mm)
    assert image.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=mm)
    assert image.GetDirection() == pytest.approx(reference.GetDirection(), abs=mm)


def segment_grid_ijk_to_ras(segmentation_node, segment_index: int = 0) -> np.ndarray:
    """The IJK-to-RAS matrix of a segment's binary labelmap (its own grid)."""
    import slicer
    import vtk
    from GVSLSharedLib import volumes
    labelmap = slicer.vtkOrientedImageData()
    segmentation = segmentation_node.GetSegmentation()
    segmentation_node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(segment_index), labelmap)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    return volumes.numpy_from_vtk_matrix(matrix)


# Training data


def test_export_gives_label_maps_on_the_volume_grids_with_the_first_case_names(scene, tmp_path):
    from GVSLSegmentLib import training_data
    from GVSLSharedLib import volumes
    cases = two_cases(scene)
    nodes_before = scene.GetNumberOfNodes()
    table = training_data.export_training_data(scene, cases, tmp_path)
    assert scene.GetNumberOfNodes() == nodes_before  # working nodes removed
    assert table == {"labels": [{"value": 1, "name": GREY, "color": pytest.approx(COLORS[GREY])},
                                {"value": 2, "name": WHITE, "color": pytest.approx(COLORS[WHITE])}]}
    assert json.loads((tmp_path / "labels.json").read_text()) == table
    assert json.loads((tmp_path / "dataset.json").read_text())["labels"] == {"background": 0, GREY: 1, WHITE: 2}

    images = sorted((tmp_path / "imagesTr").iterdir())
    labels = sorted((tmp_path / "labelsTr").iterdir())
    assert [p.name for p in images] == ["MNI-head-oblique-2_0000.nrrd", "MNI-head_0000.nrrd"]
    assert [p.name for p in labels] == ["MNI-head-oblique-2.nrrd", "MNI-head.nrrd"]
    for case, image_path, label_path in zip(cases[::-1], images, labels):
        node_image = volumes.image_from_volume_node(case.volume_node)
        image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
        assert_same_geometry(image, node_image)
        assert_same_geometry(label, node_image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(node_image))
        assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}

    # Same grid: the exported map is the tissue map itself. Oblique grid: the tissue map resampled onto it
    # (Slicer and SimpleITK round voxel centres differently at boundaries: most voxels agree).
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(labels[1]))),
                                  sitk.GetArrayFromImage(tissue_labels()))
    expected = sitk.Resample(tissue_labels(), sitk.ReadImage(str(images[0])), sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0)
    agreement = np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(labels[0]))) == sitk.GetArrayFromImage(expected))
    assert agreement > 0.97

    from gvsl.finetune.data import find_cases
    from gvsl.labels import read_label_table
    found, table_file = find_cases(tmp_path)
    assert [c.name for c in found] == ["MNI-head-oblique-2", "MNI-head"] and table_file == tmp_path / "labels.json"
    assert read_label_table(table_file) == table


def test_mismatched_segment_names_name_the_case_and_the_segment(scene, tmp_path):
    from GVSLSegmentLib import training_data
    cases = two_cases(scene)
    cases[1].segmentation_node.GetSegmentation().GetNthSegment(0).SetName("WM")
    with pytest.raises(ValueError, match=r"case 'MNI head oblique #2' has no segment 'white matter'; "
                                         r"has a segment 'WM' that the first case 'MNI head' lacks"):
        training_data.export_training_data(scene, cases, tmp_path)
    cases[0].segmentation_node.GetSegmentation().GetNthSegment(1).SetName(GREY)
    with pytest.raises(ValueError, match="case 'MNI head': several segments are named 'grey matter'"):
        training_data.label_table_for_cases(cases)
    with pytest.raises(ValueError, match="at least one"):
        training_data.label_table_for_cases([])


def test_volume_under_a_transform_is_refused(scene, tmp_path):
    from GVSLSegmentLib import training_data
    cases = two_cases(scene)
    cases[1].volume_node.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    with pytest.raises(ValueError, match="volume of case 'MNI head oblique #2' .* is under a transform"):
        training_data.export_training_data(scene, cases, tmp_path)


# Results


def ijk_to_ras(node) -> np.ndarray:
    import vtk
    from GVSLSharedLib import volumes
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return volumes.numpy_from_vtk_matrix(matrix)


def input_volume_in_a_study(scene):
    """An oblique MNI volume placed under a study item of the subject hierarchy."""
    import slicer
    from GVSLSharedLib import volumes
    t1 = mni()["t1"]
    node = volumes.add_volume_node(scene, sitk.Resample(t1, oblique_grid(t1), sitk.Transform(), sitk.sitkLinear, 0.0),
                                   "input")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, "study")
    hierarchy.CreateItem(study, node)  # Slicer's subject hierarchy plugins add new nodes themselves; slicer-core not
    return node, study


def test_label_map_import_gives_named_coloured_segments_with_geometry_and_closed_surfaces(scene, tmp_path):
    import slicer
    import vtk
    from GVSLSegmentLib import training_data
    from GVSLSharedLib import label_maps, volumes
    node, study = input_volume_in_a_study(scene)
    grid = volumes.image_from_volume_node(node)
    labels = sitk.Resample(tissue_labels((1, 3)), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    table = {"labels": [{"value": 1, "name": GREY, "color": list(COLORS[GREY])},
                        {"value": 2, "name": "lesion", "color": [1.0, 0.0, 0.0]},
                        {"value": 3, "name": WHITE, "color": list(COLORS[WHITE])}]}
    path = tmp_path / "segmentation.nii.gz"
    sitk.WriteImage(labels, str(path))
    training_data.write_label_table(table, tmp_path / "segmentation.labels.json")
    nodes_before = scene.GetNumberOfNodes()

    output = label_maps.import_label_map(scene, *label_maps.read_label_map(path), node, name="input segmentation")
    assert scene.GetNumberOfNodes() == nodes_before + 2  # the segmentation and its display node
    segmentation = output.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == [GREY, WHITE, "lesion"]  # the absent structure stays, empty
    assert [tuple(s.GetColor()) for s in segments] == [pytest.approx(COLORS[GREY]), pytest.approx(COLORS[WHITE]),
                                                        pytest.approx((1.0, 0.0, 0.0))]
    reference = slicer.vtkMRMLSegmentationNode()
    reference.SetReferenceImageGeometryParameterFromVolumeNode(node)
    assert output.GetSegmentation().GetConversionParameter("Reference image geometry") == (
        reference.GetSegmentation().GetConversionParameter("Reference image geometry"))

    np.testing.assert_array_equal(segment_grid_ijk_to_ras(output), ijk_to_ras(node))
    assert segmentation.ContainsRepresentation("Closed surface")
    for segment_id, expect_points in zip(segmentation.GetSegmentIDs(), (True, True, False)):
        surface = vtk.vtkPolyData()
        assert output.GetClosedSurfaceRepresentation(segment_id, surface)
        assert (surface.GetNumberOfPoints() > 100) == expect_points

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output)) == study

    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        output, segmentation.GetSegmentIDs()[:2], exported, node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    back = volumes.image_from_volume_node(exported)
    assert_same_geometry(back, grid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back) > 0, sitk.GetArrayFromImage(labels) > 0)

    grey_only = labels == 1
    again = label_maps.import_label_map(scene, grey_only, {"labels": table["labels"][:1]}, node, output)
    assert again is output and output.GetSegmentation().GetNumberOfSegments() == 1  # refilled, not added to
    with pytest.raises(ValueError, match=r"values \[3\] that its label table does not name"):
        label_maps.import_label_map(scene, labels, {"labels": table["labels"][:2]}, node)


def test_a_segmentation_written_as_label_map_reads_back(scene, tmp_path):
    from GVSLSegmentLib import training_data
    from GVSLSharedLib import label_maps

    from gvsl.labels import sidecar_path
    case = two_cases(scene)[1]
    path = training_data.write_label_map(scene, case.segmentation_node, case.volume_node, tmp_path / "atlas.nrrd")
    assert label_maps.label_table_path(path) == sidecar_path(path) == tmp_path / "atlas.labels.json"
    labels, table = label_maps.read_label_map(path)
    assert [(e["value"], e["name"]) for e in table["labels"]] == [(1, WHITE), (2, GREY)]  # this case's own order
    output = label_maps.import_label_map(scene, labels, table, case.volume_node)
    names = [output.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == [WHITE, GREY]
    assert label_maps.read_label_map(path, tmp_path / "atlas.labels.json")[1] == table
    with pytest.raises(ValueError, match="no label table"):
        label_maps.read_label_map(tmp_path / "elsewhere.nrrd")


# Commands, names and progress


def test_commands_and_names_agree_with_the_backend(tmp_path):
    from GVSLSegmentLib import training_data
    from GVSLSharedLib import label_maps, match

    from gvsl.cli import build_parser
    from gvsl.finetune import config, data
    from gvsl.labels import SUFFIX
    from gvsl.match import outputs as match_outputs
    parser = build_parser()
    command = finetuning.finetune_command(tmp_path / "data", tmp_path / "init.pt", tmp_path / "run", mode="linear",
                                          iterations=40, patch=64, batch=3, lr=3e-4, val_every=20,
                                          precision="fp32", device="cuda:1")
    args = parser.parse_args(command[3:])
    assert (args.command, args.data, args.init, args.out, args.mode) == (
        "finetune", str(tmp_path / "data"), str(tmp_path / "init.pt"), str(tmp_path / "run"), "linear")
    assert (args.iterations, args.patch, args.batch, args.lr, args.val_every, args.precision, args.device,
            args.progress) == (40, (64, 64, 64), 3, 3e-4, 20, "fp32", "cuda:1", False)
    scratch = parser.parse_args(finetuning.finetune_command(
        "d", "i.pt", "r", mode="scratch", iterations=1, patch=32, batch=1, lr=1e-4, val_every=1, precision="auto",
        device="auto")[3:])
    assert not hasattr(scratch, "init")
    compared = parser.parse_args(finetuning.finetune_command(
        "d", "i.pt", "r", mode="random-linear", iterations=1, patch=32, batch=1, lr=1e-4, val_every=1,
        precision="auto", device="auto", compare_with_scratch=True)[3:])
    assert (compared.mode, compared.compare, hasattr(compared, "init")) == ("random-linear", "scratch", False)
    with pytest.raises(ValueError, match="cannot be compared with training from scratch"):
        finetuning.finetune_command("d", None, "r", mode="scratch", iterations=1, patch=32, batch=1, lr=1e-4,
                                    val_every=1, precision="auto", device="auto", compare_with_scratch=True)
    auto = parser.parse_args(finetuning.finetune_command(
        "d", "i.pt", "r", mode=finetuning.AUTO_MODE, iterations=1, patch=32, batch=1, lr=1e-4, val_every=1,
        precision="auto", device="auto", compare_with_scratch=True, unlabelled="scans")[3:])
    assert (hasattr(auto, "mode"), auto.init, auto.unlabelled, auto.compare) == (
        False, "i.pt", "scans", "matching,collection")
    resolved = config.FinetuneConfig(data="d", out="r", init="i.pt", unlabelled="scans")
    assert resolved.mode == finetuning.effective_mode(finetuning.AUTO_MODE, "scans") == config.COLLECTION_MODE
    assert config.FinetuneConfig(data="d", out="r", init="i.pt").mode == finetuning.effective_mode(
        finetuning.AUTO_MODE, None)
    assert parser.parse_args(runs.resume_command(tmp_path / "run", "finetune")[3:]).resume == str(tmp_path / "run")
    segment = parser.parse_args(finetuning.segment_command("in.nrrd", tmp_path / "run", "out.nii.gz")[3:])
    assert (segment.image, segment.model, segment.out, segment.device) == ("in.nrrd", str(tmp_path / "run"),
                                                                           "out.nii.gz", "auto")
    matched = parser.parse_args(match.match_command("f.nrrd", "m.nrrd", "c.pt", tmp_path, "cpu", "atlas.nrrd")[3:])
    assert matched.labels == "atlas.nrrd"
    assert match.PROPAGATED_LABELS_NAME == match_outputs.LABELS_FILE
    assert finetuning.MODES == config.MODES and set(finetuning.PRETRAINED_MODES) == config.PRETRAINED_MODES
    assert (training_data.LABEL_TABLE_NAME, training_data.NNUNET_DATASET_NAME, label_maps.LABEL_TABLE_SUFFIX) == (
        data.LABELS_NAME, data.NNUNET_DATASET, SUFFIX)


def test_fine_tuning_events_give_loss_and_dice_charts(scene, tmp_path):
    from GVSLSharedLib import plots

    from gvsl.train.events import EventLog
    run = runs.RunFolder(tmp_path)
    with EventLog(tmp_path / runs.EVENTS_NAME) as log:
        log.write("start", iteration=0, iterations=20, device="cpu", mode="finetune")
        for iteration in (10, 20):
            log.write("iteration", iteration=iteration, iterations=20, loss=1.0 / iteration, dice_loss=0.5, ce=0.2,
                      lr=1e-4, it_per_s=2.0, eta_s=5.0, peak_memory_bytes=0, memory_kind="cpu",
                      val_dice=0.5, val_dice_per_class={GREY: 0.6, WHITE: 0.4, "lesion": None}, best_dice=0.5)
        log.write("end", iteration=20, stopped=False, best=str(tmp_path / "best.pt"), best_dice=0.5)
    run.poll()
    assert run.progress.state == "finished" and run.progress.fraction == 1.0
    losses, dice = finetuning.split_curves(run.progress.curves)
    assert set(losses) == {"loss", "dice_loss", "ce"}
    assert dice == {"Dice (mean)": [(10, 0.5), (20, 0.5)], f"Dice {GREY}": [(10, 0.6), (20, 0.6)],
                    f"Dice {WHITE}": [(10, 0.4), (20, 0.4)]}
    plots.update_loss_chart(scene, losses, "training", y_title="loss / Dice")
    chart = plots.update_loss_chart(scene, dice, "training", y_title="loss / Dice", table_name="training Dice")
    assert chart.GetYAxisTitle() == "loss / Dice" and chart.GetNumberOfPlotSeriesNodes() == 6
    dice_table = scene.GetFirstNodeByName("training Dice").GetTable()
    assert dice_table.GetNumberOfRows() == 2 and dice_table.GetValueByName(1, f"Dice {GREY}") == 0.6


def test_comparison_events_give_one_dice_curve_per_arm_run_and_the_verdict(scene, tmp_path):
    """A real comparison (``gvsl finetune --compare``'s engine: scratch and random-linear on the 6 mm MNI head, 2
    seeds, 2 iterations each) read as the module reads it: no arm-run's end ends the run, progress covers every
    arm-run, the chart has one validation Dice line per arm-run, and the results give each arm's held-out Dice and
    the verdict. The names the module repeats are the backend's."""
    from GVSLSharedLib import plots

    from gvsl.commands import finetune as finetune_command
    from gvsl.finetune.compare import ARMS_DIR, COMPARISON_NAME, FORWARDED, Arm, run_comparison
    from gvsl.finetune.config import FinetuneConfig
    from gvsl.train.events import EVENTS
    assert (runs.ARMS_DIR, runs.ARM_START, finetune_command.COMPARISON_NAME) == (
        ARMS_DIR, FORWARDED["start"], COMPARISON_NAME)
    assert {runs.COMPARISON_START, runs.ARM_START, runs.ARM_END} <= set(EVENTS)
    for folder, image in (("imagesTr", mni()["t1"]), ("labelsTr", tissue_labels())):
        (tmp_path / "data" / folder).mkdir(parents=True)
        sitk.WriteImage(image, str(tmp_path / "data" / folder / ("head_0000.nrrd" if folder == "imagesTr" else
                                                                  "head.nrrd")))
    base = FinetuneConfig(data=str(tmp_path / "data"), mode="scratch", iterations=2, val_every=1, val_windows=1,
                          patch=32, batch=1, channels=(4, 4, 4, 4, 4, 4, 4, 4, 4), spacing=(SPACING_MM,) * 3,
                          workers=0, tensorboard=False, progress=False, device="cpu")
    arms = [Arm("random-linear", "random-linear", None), Arm("scratch", "scratch", None)]
    run_comparison(base, arms, [0, 1], tmp_path / "out")

    run = runs.RunFolder(tmp_path / "out")
    assert len(run.checkpoints()) == 4  # the arm-runs' last two each: Resume can be offered
    progress = run.progress
    states, fractions = [], []
    for record in runs.parse_events((tmp_path / "out" / runs.EVENTS_NAME).read_text()):
        progress.add(record)
        states.append(progress.state)
        fractions.append(progress.fraction)
    assert states[-1] == "finished" and "finished" not in states[:-1] and "failed" not in states
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    runs_in_order = ["random-linear-seed0", "scratch-seed0", "random-linear-seed1", "scratch-seed1"]
    assert progress.arm_runs == runs_in_order and progress.curves == {}
    curves = finetuning.comparison_curves(progress)
    assert list(curves) == runs_in_order and all([i for i, _ in curve] == [1, 2] for curve in curves.values())

    chart = plots.update_loss_chart(scene, curves, "comparison", y_title="validation Dice")
    assert chart.GetNumberOfPlotSeriesNodes() == 4
    assert scene.GetFirstNodeByName("comparison table").GetTable().GetNumberOfColumns() == 5  # iteration + 4 runs

    text = finetuning.comparison_text(progress).splitlines()
    assert text[0].startswith("random-linear: held-out Dice ") and text[0].endswith("(2 seeds)")
    assert text[1].startswith("scratch: held-out Dice ")
    assert text[2].startswith("random-linear: ") and text[2].split(": ")[1] in ("pays", "no benefit", "unclear")
    partial = runs.RunProgress()
    for record in runs.parse_events((tmp_path / "out" / runs.EVENTS_NAME).read_text()):
        if record["event"] == "end":
            break
        partial.add(record)
    assert finetuning.comparison_text(partial).splitlines()[0].startswith("random-linear-seed0: held-out Dice ")


def test_real_segmentation_by_matching_carries_the_atlas_segments_onto_the_input(scene, tmp_path):
    """Segment by matching as the module runs it: the atlas segmentation written as a label map with its table,
    ``gvsl match INPUT ATLAS --labels`` (the real command in-process; tiny untrained network, coarse grid), the
    propagated map imported on the input's grid with the atlas's names and colours."""
    import torch
    from GVSLSegmentLib import training_data
    from GVSLSharedLib import label_maps, match, volumes

    from gvsl.checkpoints import gvsl_payload, save_checkpoint
    from gvsl.cli import main
    from gvsl.networks import GVSL
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "model.pt", gvsl_payload(GVSL((8, 8, 16, 16, 16, 16, 16, 8, 8)), 0))
    atlas, target = two_cases(scene)
    input_path, atlas_path = match.write_match_inputs(target.volume_node, atlas.volume_node, tmp_path)
    atlas_labels = training_data.write_label_map(scene, atlas.segmentation_node, atlas.volume_node,
                                                 tmp_path / "atlas_labels.nrrd")
    command = match.match_command(input_path, atlas_path, checkpoint, tmp_path / "out", "cpu", atlas_labels)
    assert main([*command[3:], "--spacing", "6", "6", "6", "--max-size", "32", "32", "32"]) == 0

    labels, table = label_maps.read_label_map(tmp_path / "out" / match.PROPAGATED_LABELS_NAME,
                                           label_maps.label_table_path(atlas_labels))
    assert_same_geometry(labels, volumes.image_from_volume_node(target.volume_node), mm=1e-4)
    output = label_maps.import_label_map(scene, labels, table, target.volume_node)
    np.testing.assert_array_equal(segment_grid_ijk_to_ras(output), ijk_to_ras(target.volume_node))  # snapped
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == [GREY, WHITE]
    assert segmentation.GetNthSegment(1).GetColor() == pytest.approx(COLORS[WHITE])


def test_a_collection_scan_loaded_in_slicer_is_recognised_as_the_run_kept_it(scene, tmp_path):
    """A scan of a run's unlabelled collection, loaded into the scene and written out as GVSLSegment writes its input
    (``write_volume_node``: RAS node -> LPS file), is still that scan for ``gvsl segment``: its matches are fused in."""
    from GVSLSharedLib import samples, volumes

    from gvsl.segment.collection_matches import find_collection_scan
    oblique = sitk.Resample(mni()["t1"], oblique_grid(mni()["t1"]), sitk.Transform(), sitk.sitkLinear, 0.0)
    kept = tmp_path / "run" / "collection" / "scans" / "oblique-scan.nii.gz"
    kept.parent.mkdir(parents=True)
    sitk.WriteImage(oblique, str(kept))
    node = samples.load_volume(scene, kept, "oblique scan")
    volumes.write_volume_node(node, tmp_path / "input.nrrd", "input volume")
    written = sitk.ReadImage(str(tmp_path / "input.nrrd"), sitk.sitkFloat32)
    assert find_collection_scan(tmp_path / "run", written) == "oblique-scan"
    node.GetImageData().GetPointData().GetScalars().SetValue(0, 1000.0)  # the user edited a voxel: another image
    node.GetImageData().Modified()
    volumes.write_volume_node(node, tmp_path / "edited.nrrd", "input volume")
    assert find_collection_scan(tmp_path / "run", sitk.ReadImage(str(tmp_path / "edited.nrrd"))) is None
