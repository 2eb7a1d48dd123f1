"""The plan and arithmetic of benchmarks/transfer.py: who tests, validates and trains in each rotation, which arms a
comparison holds, and differences paired by seed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
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


def test_vote_fuses_carried_label_maps_between_them():
    values = [3, 7]
    a = np.zeros((12, 12, 12), np.uint16)
    a[2:6, 3:9, 3:9] = 3
    a[8:11, 3:9, 3:9] = 7
    b = np.roll(a, 2, axis=0)  # the same structures carried 2 voxels further along D
    assert transfer.vote([a], values) is a
    np.testing.assert_array_equal(transfer.vote([a, a.copy()], values), a)
    fused = transfer.vote([a, b], values)
    overlap, union = (a == 3) & (b == 3), (a == 3) | (b == 3)
    assert np.all(fused[overlap] == 3) and not np.any((fused == 3) & ~union)
    # where they disagree the neighbourhood decides: the voxels next to the overlap from each map, not one map's
    np.testing.assert_array_equal(np.flatnonzero((fused == 3)[:, 5, 5]), [3, 4, 5, 6])
    assert set(np.unique(fused)) == {0, 3, 7}


def test_atlas_rows_join_the_table(tmp_path):
    path = tmp_path / "atlas" / "test-14380.json"
    path.parent.mkdir(parents=True)
    methods = {"gvsl match": {"mean_dice": 0.7117, "dice": [0.7]}, "SimpleITK affine": {"mean_dice": 0.5, "dice": []}}
    path.write_text(json.dumps({"test": "14380", "budgets": {"1": {"labelled": ["12876"], "methods": methods}}}))
    text = transfer.table(tmp_path)
    assert "| 14380 | 1 | atlas: gvsl match | 0.712 | – | – |" in text
    assert "| 14380 | 1 | atlas: SimpleITK affine | 0.500 | – | – |" in text


def test_collection_runs_are_tabled_and_averaged_over_donors_and_seeds(tmp_path):
    def result(test: str, seed: int, matching: float, model: float, fused: float) -> None:
        folder = tmp_path / "collection" / f"test-{test}" / f"scratch-budget-1{f'-seed{seed}' if seed else ''}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "test": test, "labelled": ["12876"], "mode": "scratch", "seed": seed,
            "train_seconds": 600.0 if seed else None, "matching_mean_dice": matching, "model_mean_dice": model,
            "collection_mean_dice": fused}))

    result("14380", 0, 0.70, 0.69, 0.72)
    result("14380", 1, 0.70, 0.71, 0.75)
    result("15496", 0, 0.60, 0.62, 0.64)
    text = transfer.table(tmp_path)
    assert "| 14380 | 12876 | scratch | 1 | 0.700 | 0.710 | 0.750 | +0.050 | 10.0 |" in text
    assert "| 15496 | 12876 | scratch | 0 | 0.600 | 0.620 | 0.640 | +0.040 | – |" in text
    # margins 0.02, 0.05, 0.04: mean 0.0367, sd 0.0153; seed 0 is the mean of its two donors
    assert ("| 1 | scratch | 3 (2 donors) | 0.667 | 0.673 | 0.703 | 0.037 ± 0.015 (n=3) | seed 0: +0.030, "
            "seed 1: +0.050 |") in text
