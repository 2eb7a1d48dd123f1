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
