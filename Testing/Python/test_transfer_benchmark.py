"""The plan and arithmetic of benchmarks/transfer.py: who tests, validates and trains in each rotation, which arms a
comparison holds, and differences paired by seed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import transfer  # noqa: E402

from gvsl.synth.donors import HELD_OUT_DONORS, OPEN_DONORS  # noqa: E402


def test_roles_rotate_over_the_open_donors_only():
    plans = [transfer.roles(donor) for donor in OPEN_DONORS]
    for plan in plans:
        used = [plan.test, plan.validation, *plan.training]
        assert sorted(used) == sorted(OPEN_DONORS)  # four distinct open donors: none tests on what it trained on
    assert sorted(plan.validation for plan in plans) == sorted(OPEN_DONORS)  # each validates once
    assert sorted(plan.training[0] for plan in plans) == sorted(OPEN_DONORS)  # each is the single labelled one once
    for donor in HELD_OUT_DONORS:
        with pytest.raises(ValueError, match="not one of the open donors"):
            transfer.roles(donor)


def test_arms_start_from_the_right_weights(tmp_path):
    for recipe in ("gvsl", "restoration"):
        folder = tmp_path / "pretrain" / recipe / "checkpoints"
        folder.mkdir(parents=True)
        for iteration in (500, 1000):
            (folder / f"iter_{iteration:06d}.pt").touch()
    one = {arm.name: arm for arm in transfer.arms(tmp_path, 1, ["gvsl", "restoration"])}
    assert list(one)[0] == "scratch"  # the reference of the verdicts
    assert one["gvsl-linear"].init.endswith("gvsl/checkpoints/iter_001000.pt")  # the last checkpoint
    assert one["restoration-finetune"].init.endswith("restoration/checkpoints/iter_001000.pt")
    assert one["random-linear"].init is None and one["scratch"].init is None
    assert set(arm.name for arm in transfer.arms(tmp_path, 2, ["gvsl"])) == {"scratch", "gvsl-finetune"}
    with pytest.raises(FileNotFoundError, match="no pre-trained checkpoint for recipe gvsl"):
        transfer.arms(tmp_path / "elsewhere", 1, ["gvsl"])


def test_differences_are_paired_by_seed_and_tabled(tmp_path):
    def runs(scores: dict[int, float]) -> dict:
        return {"seeds": [{"seed": s, "test_mean_dice": d, "iterations": 10, "train_seconds": 5.0}
                          for s, d in scores.items()]}

    # seeds finished in different orders, and one seed the reference lacks
    summary = {"results": {"scratch": runs({1: 0.5, 0: 0.4}), "gvsl-finetune": runs({0: 0.45, 1: 0.6, 2: 0.9})}}
    assert transfer.paired(summary, "gvsl-finetune", "scratch") == pytest.approx([0.05, 0.1])
    path = tmp_path / "finetune" / "test-14380" / "budget-1" / "comparison.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))
    text = transfer.table(tmp_path)
    assert "| 14380 | 1 | gvsl-finetune - scratch | 0.075 ± 0.035 (n=2) |" in text
    assert "| 14380 | 1 | scratch | 0.450 ± 0.071 (n=2) | 10 | 5 |" in text
