"""The self-test body (``GVSLSharedLib.pipeline_check``) when a step goes wrong; the whole pipeline, as the modules'
Test classes run it, is in ``test_slicer_module_self_tests.py``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLShared"), str(ROOT / "GVSLSegment")]

from GVSLSharedLib import pipeline_check  # noqa: E402  (imports no slicer)


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
