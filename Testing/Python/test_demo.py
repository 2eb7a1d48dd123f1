"""`gvsl demo`, shortened: a real sample collection, 3 s of pre-training a tiny network, matching with known truth."""
from __future__ import annotations

import json
import re

import pytest
import SimpleITK as sitk
from PIL import Image

from gvsl.checkpoints import load_checkpoint
from gvsl.cli import main


def test_demo_smoke(tmp_path, capsys):
    """The demo is budgeted by time: pre-training stops at the budget (here 3 s), whatever the machine's speed."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.05", "--subjects", "3", "--log-every", "1",
                 "--channels", "4,4,8,8,8,8,8,4,4"]) == 0
    printed = capsys.readouterr().out
    stopped = re.search(r"time budget reached at iteration (\d+)", printed)
    assert stopped and "iteration     1  mean loss" in printed and str(out / "match" / "panel.png") in printed
    iteration = int(stopped.group(1))
    assert load_checkpoint(out / "run" / "checkpoints" / f"iter_{iteration:06d}.pt")["iteration"] == iteration
    errors = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(
        r"  (no registration|initial alignment|untrained network|network \+ refinement|network) +mean distance.*: "
        r"+([\d.]+) mm", printed)}
    assert set(errors) == {"no registration", "initial alignment", "untrained network", "network",
                           "network + refinement"}
    # What the few iterations taught is judged against the same network before training, and the demo says which
    # way it went rather than presenting the matches as learned (a few iterations usually make them worse).
    too_few = f"note: {iteration} iterations in 0.05 minutes were too few for the network to learn" in printed
    assert too_few == (errors["network"] >= errors["untrained network"])
    assert ("pre-training brought the network's matches" in printed) != too_few
    # Whatever two iterations taught the network, the refinement on the pair lands near the truth.
    assert errors["network + refinement"] < 0.3 * errors["no registration"]
    metrics = json.loads((out / "match" / "metrics.json").read_text())
    assert all(abs(metrics["point_errors_mm"][k] - v) < 0.01 for k, v in errors.items())
    fixed = sitk.ReadImage(metrics["fixed"])
    warped = sitk.ReadImage(str(out / "match" / "moving_warped.nii.gz"))
    assert warped.GetSize() == fixed.GetSize()
    assert warped.GetOrigin() == pytest.approx(fixed.GetOrigin(), abs=1e-4)  # NIfTI stores float32
    panel = Image.open(out / "match" / "panel.png")
    assert panel.mode == "L" and panel.size[0] > 4 * 3 * min(fixed.GetSize())  # four columns, three times larger
