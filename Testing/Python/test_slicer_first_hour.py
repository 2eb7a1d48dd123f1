"""A new user's first hour, through each module's logic on a real MRML scene (``slicer-core``): load the sample
heads, match them without a checkpoint, and get the atlas's labels as a segmentation with names and colours; a
running match cancelled within 2 s, leaving no process and no work folder behind.

The jobs run as the modules run them (the module's command lines in background processes, polled).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLShared"), str(ROOT / "GVSLSegment")]

from GVSLSharedLib import jobs  # noqa: E402  (imports no slicer)

CANCEL_LIMIT_S = 2.0
TISSUES = {"grey matter", "white matter"}


@pytest.fixture(scope="module")
def sample_heads(tmp_path_factory) -> Path:
    """The heads sample as "Load sample" writes it (two heads, grey/white matter on the second)."""
    pytest.importorskip("slicer", reason="needs Slicer's MRML: pip install slicer-core")
    from GVSLSharedLib import pipeline_check, samples

    folder = tmp_path_factory.mktemp("sample")
    job = samples.start_sample(folder, samples.HEADS)
    pipeline_check.run_to_end(job.process, "writing the sample heads")
    return folder


def segment_names_and_colours(segmentation_node) -> dict[str, tuple[float, ...]]:
    segmentation = segmentation_node.GetSegmentation()
    return {segment.GetName(): tuple(round(c, 3) for c in segment.GetColor())
            for segment in (segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments()))}


def labelled_voxels(scene, segmentation_node, reference_node) -> int:
    import numpy as np
    from GVSLSegmentLib import training_data

    table = training_data.label_table_for_cases([training_data.TrainingCase(reference_node, segmentation_node)])
    labels = training_data.export_label_map(scene, segmentation_node, reference_node, table)
    import SimpleITK as sitk

    return int(np.count_nonzero(sitk.GetArrayViewFromImage(labels)))


def test_pretrain_module_sample_match_without_checkpoint_and_propagated_segmentation(scene, sample_heads, tmp_path):
    """GVSLPretrain: Load sample, Compute matches with no checkpoint, Propagate segmentation onto the fixed head."""
    from GVSLSharedLib import match, pipeline_check, samples

    loaded = samples.load_sample(scene, sample_heads, samples.HEADS)
    assert [node.GetName() for node in loaded.volumes] == ["GVSL sample head 1", "GVSL sample head 2"]
    assert set(segment_names_and_colours(loaded.segmentation)) == TISSUES
    job = match.start_match(loaded.target, loaded.atlas, None, tmp_path / "match", "cpu")
    pipeline_check.run_to_end(job.process, "gvsl match")
    assert job.inputs[2] == job.outDir / match.UNTRAINED_NAME and job.inputs[2].is_file()  # for the probe
    result = match.load_match_outputs(job.outDir)
    assert result.network_transform is not None  # the untrained network's answer, then the refinement's
    match.show_match(scene, result, loaded.target)
    carried = match.propagate_segmentation(scene, loaded.segmentation, loaded.atlas, loaded.target, result.transform,
                                           "carried")
    assert segment_names_and_colours(carried) == segment_names_and_colours(loaded.segmentation)
    assert carried.GetSegmentation().ContainsRepresentation("Closed surface")
    assert labelled_voxels(scene, carried, loaded.target) > 0


def test_segment_module_sample_segmentation_by_matching_without_checkpoint(scene, sample_heads, tmp_path):
    """GVSLSegment: Load sample, Segment by matching with no checkpoint: the atlas's labels on the input volume."""
    from GVSLSegmentLib import results
    from GVSLSharedLib import pipeline_check, samples

    loaded = samples.load_sample(scene, sample_heads, samples.HEADS)
    job = results.start_segmentation_by_matching(scene, loaded.target, loaded.atlas, loaded.segmentation, None,
                                                 tmp_path / "atlas", "cpu")
    pipeline_check.run_to_end(job.process, "gvsl match --labels")
    output = results.segmentation_of_job(scene, job, name="carried")
    assert segment_names_and_colours(output) == segment_names_and_colours(loaded.segmentation)
    assert output.GetSegmentation().ContainsRepresentation("Closed surface")
    assert labelled_voxels(scene, output, loaded.target) > 0
    job.discard()
    assert not job.folder.exists()


def process_group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_stops_a_running_match_within_2_s_and_leaves_nothing(scene, sample_heads, tmp_path):
    from GVSLSharedLib import match, samples

    loaded = samples.load_sample(scene, sample_heads, samples.HEADS)
    job = match.start_match(loaded.target, loaded.atlas, None, jobs.new_work_folder(tmp_path, "match"), "cpu")
    time.sleep(1.0)  # it is importing torch, or matching
    assert job.poll() is None and job.folder.is_dir()
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < CANCEL_LIMIT_S
    assert job.poll() == -signal.SIGKILL
    assert not process_group_alive(job.process.process.pid)
    assert not job.folder.exists()


def test_work_folders_are_unique_and_a_failed_job_names_its_kept_folder(tmp_path):
    from GVSLSharedLib.runs import BackgroundProcess

    folders = [jobs.new_work_folder(tmp_path, "match") for _ in range(3)]  # within one second
    assert len(set(folders)) == 3 and all(folder.is_dir() for folder in folders)
    failing = jobs.Job(BackgroundProcess([sys.executable, "-c", "raise SystemExit('no good')"],
                                         folders[0] / "job.log"), folders[0])
    while failing.poll() is None:
        time.sleep(0.05)
    message = failing.failure("gvsl match", failing.poll())
    assert str(folders[0]) in message and "no good" in message and folders[0].is_dir()


def test_quick_look_preset_is_the_backends_quick_recipe_and_full_its_defaults():
    sys.path.insert(0, str(ROOT / "GVSLPretrain"))
    from GVSLPretrainLib import presets
    from GVSLSharedLib import runs

    from gvsl.cli import build_parser
    from gvsl.pretrain.recipe import QUICK_RECIPE
    from gvsl.train.config import TrainConfig

    full, quick = presets.PRESETS[presets.FULL], presets.PRESETS[presets.QUICK_LOOK]
    defaults = TrainConfig()
    assert (full.iterations, (full.patch,) * 3, full.batch, full.lr, full.flags) == (
        defaults.iterations, defaults.patch, runs.AUTO_BATCH, defaults.lr, ())
    command = runs.pretrain_command("data", "run", iterations=quick.iterations, patch=quick.patch, batch=quick.batch,
                                    lr=quick.lr, precision="auto", device="cpu", flags=quick.flags)
    args = build_parser().parse_args(command[3:])
    given = {name: getattr(args, name) for name in QUICK_RECIPE}
    assert TrainConfig(**{**given, "batch": int(given["batch"])}) == TrainConfig(**QUICK_RECIPE)
    assert quick.iterations <= 1000  # minutes on a CPU (gvsl demo: about 70 iterations a minute on 2 cores)


def test_unlabelled_matching_shows_as_progress_and_comparison_rows_as_they_come():
    sys.path.insert(0, str(ROOT / "GVSLSegment"))
    from GVSLSegmentLib import finetuning
    from GVSLSharedLib import runs

    progress = runs.RunProgress()
    progress.add({"event": "start", "device": "cpu", "iterations": 100})
    progress.add({"event": "pseudo_labels", "done": 2, "total": 5, "scan": "case-07"})
    assert progress.message == "matching 2/5 scans (case-07)" and progress.state == "running"
    comparison = runs.RunProgress()
    comparison.add({"event": "comparison_start", "arm_runs": ["finetune-seed0", "matching-seed0"]})
    assert finetuning.comparison_text(comparison) == ""
    comparison.add({"event": "arm_end", "arm": "matching-seed0", "test_mean_dice": 0.7})
    assert finetuning.comparison_text(comparison) == "matching-seed0: held-out Dice 0.700"
    assert comparison.fraction == 0.5
    command = finetuning.finetune_command("data", "init.pt", "run", mode="finetune", iterations=10, patch=32, batch=1,
                                          lr=1e-4, val_every=5, precision="auto", device="cpu",
                                          compare_with_scratch=True, unlabelled="scans")
    assert command[command.index("--unlabelled") + 1] == "scans"
    assert command[command.index("--compare") + 1] == "scratch,matching,collection"
    alone = finetuning.finetune_command("data", "init.pt", "run", mode="finetune", iterations=10, patch=32, batch=1,
                                        lr=1e-4, val_every=5, precision="auto", device="cpu")
    assert "--unlabelled" not in alone and "--compare" not in alone
