"""The modules' self-test body (``GVSLPretrainLib.pipeline_check``, ``GVSLSegmentLib.pipeline_check``), which
Slicer runs from each module's ``ScriptedLoadableModuleTest``, run here against a real ``slicer-core`` scene with the
real backend in background processes: sample heads from the MNI152 template (nilearn wheel) → pre-training →
matches → fine-tuning → segmentation, and the scene afterwards."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLPretrain"), str(ROOT / "GVSLSegment")]

from GVSLPretrainLib import pipeline_check, runs  # noqa: E402  (imports no slicer)

from gvsl.sample_data import TISSUES  # noqa: E402


def test_self_test_runs_the_pipeline_and_leaves_the_expected_nodes(scene, tmp_path):
    from GVSLPretrainLib import volumes
    from GVSLSegmentLib import finetuning
    from GVSLSegmentLib import pipeline_check as segment_check
    ticks = []
    out = segment_check.check_finetune_and_segment(scene, tmp_path, lambda: ticks.append(1))
    assert ticks, "the GUI callback was never called while processes ran"

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

    # fine-tuning was followed through its event file like the module follows it: per-class Dice curves
    run = runs.RunFolder(out["run"])
    run.poll()
    dice = finetuning.split_curves(run.progress.curves)[1]
    assert {f"Dice {name}" for name in TISSUES.values()} <= set(dice)
    # the segmentation is on the target head's grid, with the training segments' names
    segmentation = out["segmentation"].GetSegmentation()
    assert sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())) == \
        sorted(TISSUES.values())


def test_a_failing_step_names_itself_and_shows_its_log(scene, tmp_path):
    """A broken checkpoint: the match step fails with CheckFailed naming ``gvsl match`` and quoting its error."""
    heads = pipeline_check.write_sample_heads(tmp_path / "sample", subjects=2)
    assert [path.name for path, _ in heads] == ["head-01.nrrd", "head-02.nrrd"]
    assert all(labels.exists() for _, labels in heads)
    fixed, moving = (pipeline_check.load_volume(scene, path, name) for (path, _), name in zip(heads, "ab"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(pipeline_check.CheckFailed, match=r"(?s)gvsl match failed.*broken\.pt"):
        pipeline_check.match_in_scene(scene, fixed, moving, broken, tmp_path / "match")
