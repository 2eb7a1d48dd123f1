"""`gvsl pretrain`: configuration, exact resume, stopping, checkpoints, events and user-facing errors.

Runs are tiny (widths 8..16, 32^3 patches, batch 1, a few iterations, CPU, no workers).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cache import make_tiny_cache
from untrained_models import assert_killed_pretraining_resumes

from gvsl.checkpoints import load_checkpoint
from gvsl.cli import main
from gvsl.networks import GVSL
from gvsl.pretrain.engine import run_training
from gvsl.pretrain.step import TrainStep
from gvsl.train.config import TrainConfig, parse_duration, resolve_config
from gvsl.train.events import EVENTS, read_events
from gvsl.train.run import TrainingError
from gvsl.train.state import list_checkpoints

WIDTHS = (8, 8, 16, 16, 16, 16, 16, 8, 8)
TINY = dict(patch=32, batch=1, channels=WIDTHS, workers=0, tensorboard=False, progress=False, log_every=1)
TINY_FLAGS = ["--patch", "32", "--batch", "1", "--channels", ",".join(map(str, WIDTHS)), "--workers", "0",
              "--no-tensorboard", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("pretrain"))


def _config(cache: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(cache), out=str(out), **{**TINY, **kw})


def _stop_at(run_dir: Path, iteration: int):
    """Event listener that creates RUN_DIR/STOP when ``iteration`` has been logged."""
    def listener(record: dict) -> None:
        if record["event"] == "iteration" and record["iteration"] == iteration:
            (run_dir / "STOP").touch()
    return listener


def _final(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir)[-1][1])


def test_config_precedence_and_resume_locks(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"iterations": 7, "lr": 3e-4, "patch": [32, 48, 64]}))
    config = resolve_config(TrainConfig, {"lr": 1e-3, "data": "x", "out": str(tmp_path / "run")}, tmp_path / "c.json")
    assert (config.iterations, config.lr, config.patch, config.batch) == (7, 1e-3, (32, 48, 64), "auto")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        resolve_config(TrainConfig, {"learning_rate": 1})
    with pytest.raises(ValueError, match="nine widths"):
        TrainConfig(channels="8,8,8")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(config.to_dict()))
    resumed = resolve_config(TrainConfig, {"iterations": 20, "workers": 3}, resume_dir=tmp_path / "run")
    assert (resumed.iterations, resumed.workers, resumed.lr) == (20, 3, 1e-3)
    with pytest.raises(ValueError, match="cannot change: lr, patch"):
        resolve_config(TrainConfig, {"lr": 1.0, "patch": (64, 64, 64)}, resume_dir=tmp_path / "run")


def test_interrupted_and_resumed_equals_uninterrupted(cache, tmp_path):
    """Stops at 3 (off a checkpoint boundary) and at 4 (on one), resumes to 8: bit-identical to one run of 8."""
    whole = run_training(_config(cache, tmp_path / "whole", iterations=8, checkpoint_every=4))
    assert (whole.iteration, whole.stopped) == (8, False)
    reference = _final(tmp_path / "whole")
    for stop_at in (3, 4):
        run_dir = tmp_path / f"stop{stop_at}"
        first = run_training(_config(cache, run_dir, iterations=8, checkpoint_every=4),
                             on_event=_stop_at(run_dir, stop_at))
        assert (first.iteration, first.stopped) == (stop_at, True)
        assert first.checkpoint.name == f"iter_{stop_at:06d}.pt"
        second = run_training(resolve_config(TrainConfig, {}, resume_dir=run_dir), resume=True)
        assert (second.iteration, second.stopped) == (8, False)
        assert not (run_dir / "STOP").exists()
        resumed = _final(run_dir)
        for key, value in reference["model"].items():
            assert torch.equal(value, resumed["model"][key]), key
        for key, state in reference["optimizer"]["state"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(state[name], resumed["optimizer"]["state"][key][name])
        starts = [r for r in read_events(run_dir / "events.jsonl") if r["event"] == "start"]
        assert starts[1]["resumed_from"].endswith(f"iter_{stop_at:06d}.pt") and starts[1]["iteration"] == stop_at


def test_resume_with_loader_workers_equals_uninterrupted(cache, tmp_path):
    """With two data loader processes the pair stream is still a function of the iteration: stopped at 2, resumed
    to 5 equals one run of 5 (the loader restarts mid-way between checkpoints)."""
    settings = dict(iterations=5, checkpoint_every=4, workers=2)
    run_training(_config(cache, tmp_path / "whole", **settings))
    run_dir = tmp_path / "stopped"
    assert run_training(_config(cache, run_dir, **settings), on_event=_stop_at(run_dir, 2)).iteration == 2
    assert run_training(resolve_config(TrainConfig, {}, resume_dir=run_dir), resume=True).iteration == 5
    reference, resumed = _final(tmp_path / "whole"), _final(run_dir)
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_panel_tiles_are_the_middle_slices_superior_up():
    """Columns = volumes, rows = axial / coronal / sagittal middle slices; in the last two, array index d (LPS
    superior on the cache's grid) grows upwards."""
    from gvsl.train.panels import GAP, slice_panel
    d, h, w = np.meshgrid(np.arange(6), np.arange(8), np.arange(10), indexing="ij")
    volume = (d * 100 + h * 10 + w).astype(np.float32)
    panel = slice_panel([volume, volume + 1], low=0.0, high=1000.0) * 1000
    np.testing.assert_allclose(panel[:8, :10], volume[3], atol=1e-3)
    np.testing.assert_allclose(panel[8 + GAP:8 + GAP + 6, :10], volume[::-1, 4, :], atol=1e-3)
    np.testing.assert_allclose(panel[2 * (8 + GAP):2 * (8 + GAP) + 6, :8], volume[::-1, :, 5], atol=1e-3)
    np.testing.assert_allclose(panel[:8, 10 + GAP:20 + GAP], volume[3] + 1, atol=1e-3)
    assert panel.shape == (3 * 8 + 2 * GAP, 2 * 10 + GAP)


def test_tensorboard_scalars_and_panels(cache, tmp_path, monkeypatch):
    """TensorBoard holds every logged loss (equal to the event file's) and, every ``image_every`` iterations, the
    panel of the step's own views (A, B, warped B, restored A), as written by ``slice_panel``."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gvsl.pretrain.engine import PretrainTrainer
    from gvsl.train.panels import slice_panel
    shown = []
    original = PretrainTrainer.add_panel
    monkeypatch.setattr(PretrainTrainer, "add_panel",
                        lambda self, views, iteration: (shown.append(views), original(self, views, iteration)))
    run_dir = tmp_path / "run"
    run_training(_config(cache, run_dir, iterations=4, tensorboard=True, image_every=2))

    board = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    logged = [r for r in read_events(run_dir / "events.jsonl") if r["event"] == "iteration"]
    for name in ("loss", "ncc", "mse", "smooth"):
        scalars = board.Scalars(f"loss/{name}")
        assert [s.step for s in scalars] == [1, 2, 3, 4]
        np.testing.assert_allclose([s.value for s in scalars], [r[name] for r in logged], rtol=1e-6)
    images = board.Images("panels/A_B_warpedB_restoredA")
    assert [image.step for image in images] == [2, 4] and len(shown) == 2
    for image, views in zip(images, shown):
        assert [tuple(v.shape) for v in views] == [(32, 32, 32)] * 4
        pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("L"), np.float32) / 255
        np.testing.assert_allclose(pixels, slice_panel(views), atol=1 / 255 + 1e-6)
        assert all(np.ptp(column) > 0.05 for column in np.split(pixels[:32, :4 * 32 + 6], [34, 68, 102], axis=1))


def test_checkpoints_events_and_config(cache, tmp_path):
    run_dir = tmp_path / "run"
    result = run_training(_config(cache, run_dir, iterations=5, checkpoint_every=2, keep_checkpoints=2))
    assert [i for i, _ in list_checkpoints(run_dir)] == [4, 5]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary files
    payload = load_checkpoint(result.checkpoint)  # weights_only=True
    assert payload["format"] == "gvsl" and payload["iteration"] == 5 and payload["channels"] == list(WIDTHS)
    assert payload["conventions"] == "corrected" and payload["config"]["iterations"] == 5
    assert {"optimizer", "scaler", "rng", "config"} <= set(payload)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["channels"] == list(WIDTHS) and saved["cache"] == str(cache)
    records = read_events(run_dir / "events.jsonl")
    assert all(r["event"] in EVENTS and isinstance(r["time"], float) for r in records)
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    iterations = [r for r in records if r["event"] == "iteration"]
    assert [r["iteration"] for r in iterations] == [1, 2, 3, 4, 5]
    for key in ("loss", "ncc", "mse", "smooth", "lr", "it_per_s", "eta_s", "peak_memory_bytes"):
        assert all(np.isfinite(r[key]) for r in iterations), key
    assert [r["iteration"] for r in records if r["event"] == "checkpoint"] == [2, 4, 5]


def test_signal_stops_with_a_checkpoint(cache, tmp_path):
    def interrupt(record: dict) -> None:
        if record["event"] == "iteration" and record["iteration"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a shell's background job
    result = run_training(_config(cache, tmp_path / "run", iterations=50), on_event=interrupt)
    assert (result.iteration, result.stopped) == (2, True)
    assert [i for i, _ in list_checkpoints(tmp_path / "run")] == [2]
    stop = [r for r in read_events(tmp_path / "run" / "events.jsonl") if r["event"] == "stop"]
    assert stop == [{**stop[0], "iteration": 2, "reason": "SIGINT"}]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_time_limit_stops_with_a_resumable_checkpoint(cache, tmp_path):
    run_dir = tmp_path / "run"
    result = run_training(_config(cache, run_dir, iterations=100_000, time_limit_s=1.0))
    assert result.stopped and 0 < result.iteration < 100_000
    final = _final(run_dir)
    assert final["iteration"] == result.iteration
    assert (final["initial_alignment"], final["architecture"]) == ("centres-of-mass", "correlation")  # for gvsl match
    assert [e["reason"] for e in read_events(run_dir / "events.jsonl") if e["event"] == "stop"] == ["time limit"]
    assert parse_duration("90m") == 5400 and parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_cli_new_run_resume_and_refusals(cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["pretrain", str(cache), "--out", str(run_dir), "--iterations", "2", *TINY_FLAGS]) == 0
    assert "finished at iteration 2" in capsys.readouterr().out
    # Same folder again without --resume: refused, nothing touched.
    before = (run_dir / "events.jsonl").read_text()
    assert main(["pretrain", str(cache), "--out", str(run_dir), "--iterations", "2", *TINY_FLAGS]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "events.jsonl").read_text() == before
    assert main(["pretrain", "--resume", str(run_dir), "--iterations", "3"]) == 0
    assert [i for i, _ in list_checkpoints(run_dir)] == [2, 3]
    assert main(["pretrain", "--resume", str(run_dir), "--lr", "0.1"]) == 1
    assert "cannot change: lr" in capsys.readouterr().err


def test_init_from_published_state_dict_and_wrong_architecture(cache, tmp_path, capsys):
    published = tmp_path / "published.pth"
    torch.save(GVSL(channels=WIDTHS, conventions="original").state_dict(), published)
    config = _config(cache, tmp_path / "run", iterations=1, init=str(published), channels=None)
    result = run_training(config)
    assert result.model.conventions == "original" and result.model.channels == WIDTHS
    assert json.loads((tmp_path / "run" / "config.json").read_text())["conventions"] == "original"
    wrong = ",".join(["8"] * 9)
    flags = [f if f != ",".join(map(str, WIDTHS)) else wrong for f in TINY_FLAGS]
    assert main(["pretrain", str(cache), "--out", str(tmp_path / "w"), "--init", str(published), *flags]) == 1
    err = capsys.readouterr().err
    assert "does not fit this GVSL network" in err and "mis-shaped" in err


def test_user_errors_are_clear(cache, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", str(empty), "--out", str(tmp_path / "r1"), *TINY_FLAGS]) == 1
    error = capsys.readouterr().err
    assert "gvsl pretrain: error:" in error
    assert f"nothing was trained: {tmp_path / 'r1'} holds no checkpoint and can be given to --out again" in error
    assert read_events(tmp_path / "r1" / "events.jsonl")[-1]["type"] == "NoUsableDataError"
    # The failed run left no checkpoint, so the same folder can be used again.
    assert main(["pretrain", str(cache), "--out", str(tmp_path / "r1"), "--iterations", "1", *TINY_FLAGS]) == 0
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            assert main(["pretrain", str(cache), "--out", str(locked / "run"), *TINY_FLAGS]) == 1
            assert "cannot write to the output folder" in capsys.readouterr().err
        finally:
            locked.chmod(0o755)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainStep, "__call__", out_of_memory)
    with pytest.raises(TrainingError, match="lower --patch, --batch or --channels"):
        run_training(_config(cache, tmp_path / "oom", iterations=2))
    error = read_events(tmp_path / "oom" / "events.jsonl")[-1]
    assert error["event"] == "error" and "activation-checkpointing" in error["message"]


def test_spacing_sets_the_cache_grid_and_a_given_cache_keeps_its_own(cache, tmp_path, capsys):
    """``--spacing 2`` prepares DATA on a 2 mm grid (half the 1 mm size) and the checkpoint records it, so matching
    preprocesses alike; a cache given as DATA with another --spacing is refused, naming both."""
    from gvsl.data import cache_preprocessing
    run_dir = tmp_path / "coarse"
    assert main(["pretrain", str(cache.parent / "volumes"), "--out", str(run_dir), "--spacing", "2",
                 "--iterations", "1", *TINY_FLAGS]) == 0
    assert cache_preprocessing(run_dir / "cache")["target_spacing"] == [2.0, 2.0, 2.0]
    shapes = [np.load(path, mmap_mode="r").shape for path in sorted((run_dir / "cache").rglob("*.npy"))]
    assert len(shapes) == 3 and all(max(shape) <= 23 for shape in shapes)  # 36-44 voxels of 1 mm -> 18-22 of 2 mm
    assert _final(run_dir)["preprocessing"]["target_spacing"] == [2.0, 2.0, 2.0]
    capsys.readouterr()
    assert main(["pretrain", str(cache), "--out", str(tmp_path / "refused"), "--spacing", "2", *TINY_FLAGS]) == 1
    assert "prepared at (1.0, 1.0, 1.0) mm, not --spacing (2.0, 2.0, 2.0)" in capsys.readouterr().err


def test_kill_9_leaves_only_loadable_checkpoints(cache, tmp_path):
    """A hard kill right after a checkpoint event: every checkpoint file left loads, and resuming works."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "gvsl", "pretrain", str(cache), "--out", str(run_dir), "--iterations", "1000",
               "--checkpoint-every", "1", "--keep-checkpoints", "2", *TINY_FLAGS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        events = run_dir / "events.jsonl"
        while not (events.exists() and sum(r["event"] == "checkpoint" for r in read_events(events)) >= 3):
            assert process.poll() is None, "training ended early"
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    assert_killed_pretraining_resumes(run_dir)
