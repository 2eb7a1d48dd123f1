"""Matches judged by point error against a known truth, on the harness's sample heads (benchmarks/match_accuracy.py).

The sample heads are warped copies of the real MNI152 T1 template whose warps are known, so the true
correspondence between two heads is known everywhere.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvsl.checkpoints import gvsl_payload, save_checkpoint
from gvsl.networks import GVSL
from gvsl.pretrain.recipe import QUICK_RECIPE

ROOT = Path(__file__).resolve().parents[2]
PREPROCESSING_3MM = {"target_spacing": [3.0, 3.0, 3.0], "ct_window": [-1024.0, 1024.0], "mr_percentiles": [0.5, 99.5]}


def harness(checkpoint: Path, *options: str) -> dict:
    """Run benchmarks/match_accuracy.py as a user would; its JSON summary."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "match_accuracy.py"), "--checkpoint",
                           str(checkpoint), *options], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_identity_network_reproduces_the_no_registration_baseline(tmp_path):
    """A network that returns the identity, in the physical frame the sample heads share, is exactly no
    registration: 13.4 mm on the harness's heads (seed 7, 3 mm), to 0.1 mm."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "identity.pt", gvsl_payload(
        GVSL((4, 8, 8, 8, 8, 8, 8, 8, 4)), 0, preprocessing=PREPROCESSING_3MM))
    rows = harness(checkpoint, "--initial-alignment", "physical", "--refine", "0", "--no-baselines")["rows"]
    assert rows["no registration"]["mean_mm"] == pytest.approx(13.4, abs=0.1)
    assert rows["network"]["mean_mm"] == pytest.approx(rows["no registration"]["mean_mm"], abs=0.1)
    assert rows["network"]["pair_means_mm"] == pytest.approx(rows["no registration"]["pair_means_mm"], abs=0.1)


def network_errors(checkpoint: Path, heads) -> tuple[float, float]:
    """Mean point errors over the consecutive pairs of ``heads``: the network alone (no refinement), and the
    initial alignment it starts from (centres of mass)."""
    from gvsl.checkpoints import load_gvsl
    from gvsl.data import PrepareConfig
    from gvsl.match import MatchConfig, RefineConfig, match_volumes
    from gvsl.sample_data import correspondence_errors_mm

    model, _ = load_gvsl(checkpoint)
    config = MatchConfig(prepare=PrepareConfig(target_spacing=(LEARNING_SPACING_MM,) * 3),
                         refine=RefineConfig(iterations=0))
    errors = []
    for n, (fixed, moving) in enumerate(zip(heads, heads[1:])):
        result = match_volumes(*(sitk.ReadImage(str(h.volume)) for h in (fixed, moving)), model,
                               fixed_modality="MR", moving_modality="MR", config=config)
        errors.append([correspondence_errors_mm(fixed, moving, transform, 500, n).mean()
                       for transform in (result.transform, result.initial)])
    network, initial = np.mean(errors, axis=0)
    return float(network), float(initial)


LEARNING_SPACING_MM = 6.0
LEARNING_STEPS = 400


def test_pretraining_learns_correspondence(tmp_path):
    """A narrow network pre-trained for about a minute on coarse sample heads matches held-out heads (another
    seed) clearly better than the initial alignment it starts from and than itself untrained. It fails if learning
    breaks again (a head that stays at the identity, gradients that do not reach it, pairs without
    correspondence)."""
    from gvsl.pretrain.engine import build_gvsl, run_training
    from gvsl.sample_data import write_sample_heads
    from gvsl.train.config import TrainConfig

    write_sample_heads(tmp_path / "train", n_subjects=8, spacing=LEARNING_SPACING_MM, seed=0)
    held_out = write_sample_heads(tmp_path / "held_out", n_subjects=3, spacing=LEARNING_SPACING_MM, seed=7)
    recipe = {**QUICK_RECIPE, "patch": (32, 32, 32), "spacing": (LEARNING_SPACING_MM,) * 3}
    config = TrainConfig(data=str(tmp_path / "train" / "volumes"), out=str(tmp_path / "run"),
                         iterations=LEARNING_STEPS, channels=(4, 8, 16, 16, 32, 16, 16, 8, 4), workers=0,
                         checkpoint_every=LEARNING_STEPS, log_every=50, tensorboard=False, progress=False, **recipe)
    untrained = save_checkpoint(tmp_path / "untrained.pt", gvsl_payload(
        build_gvsl(config, torch.device("cpu")), 0, preprocessing={**PREPROCESSING_3MM,
                                                                  "target_spacing": [LEARNING_SPACING_MM] * 3}))
    result = run_training(config)
    (untrained_error, initial_error), (trained_error, _) = (network_errors(path, held_out)
                                                            for path in (untrained, result.checkpoint))
    print(f"held-out mean error: centres of mass {initial_error:.2f} mm, untrained network {untrained_error:.2f} mm, "
          f"after {result.iteration} steps {trained_error:.2f} mm")
    assert trained_error < 0.8 * initial_error and trained_error < 0.8 * untrained_error


def test_points_whose_match_is_outside_the_moving_scan_are_found(tmp_path):
    """``TrueMatches.with_counterpart``: a head's brain points all have a counterpart in the head itself (but those
    within the margin of its faces); cut the moving scan in half along x and about half of them lose it, the ones on
    the cut side (the two heads differ by a few voxels, so a point's true match lies near its own position)."""
    from gvsl.sample_data import SampleHead, brain_point_matches, write_sample_heads

    fixed, moving = write_sample_heads(tmp_path, n_subjects=2, spacing=4.0, seed=7)
    assert brain_point_matches(fixed, fixed, 500).with_counterpart(2).mean() > 0.99

    image = sitk.ReadImage(str(moving.volume))
    half = image.GetSize()[0] // 2
    sitk.WriteImage(image[:half, :, :], str(tmp_path / "half.nrrd"))
    truth = brain_point_matches(fixed, moving, 500)
    full = truth.with_counterpart(2)
    kept = truth._replace(moving=SampleHead(tmp_path / "half.nrrd", moving.labels, moving.to_template)
                          ).with_counterpart(2)
    assert full.mean() > 0.9 and 0.25 < kept.mean() < 0.6
    assert np.all(full[kept])  # cutting the scan never adds a counterpart
    x = np.asarray([image.TransformPhysicalPointToContinuousIndex(p)[0] for p in truth.fixed_lps])
    assert x[kept].max() < half + 2 and np.median(x[full & ~kept]) > half


def test_a_moving_scan_cut_short_does_not_drag_the_match(tmp_path):
    """A moving scan whose field of view ends inside the fixed one (here: a head matched to its own left half) is
    zero beyond its data; the refinement compares only where the moving scan has data (``moving_support``), so the
    match stays the identity, also for the points whose match is cut away. Comparing against the zero padding
    instead dragged the brain towards the cut: 10 mm off on the kept half, 26 mm over all points."""
    from gvsl.data import PrepareConfig
    from gvsl.match import MatchConfig, match_volumes
    from gvsl.sample_data import SampleHead, brain_point_matches, write_sample_heads

    (head,) = write_sample_heads(tmp_path, n_subjects=1, spacing=4.0, seed=7)
    image = sitk.ReadImage(str(head.volume))
    sitk.WriteImage(image[:image.GetSize()[0] // 2], str(tmp_path / "half.nrrd"))
    half = SampleHead(tmp_path / "half.nrrd", head.labels, head.to_template)
    torch.manual_seed(0)
    config = MatchConfig(prepare=PrepareConfig(target_spacing=(4.0,) * 3), initial_alignment="physical")
    result = match_volumes(image, sitk.ReadImage(str(half.volume)), GVSL((4, 8, 8, 8, 8, 8, 8, 8, 4)),
                           fixed_modality="MR", moving_modality="MR", config=config)
    truth = brain_point_matches(head, half, 1000)
    errors, kept = truth.errors_mm(result.transform), truth.with_counterpart(2)
    assert 0.3 < kept.mean() < 0.6
    assert errors[kept].mean() < 0.3 and errors.mean() < 0.6
