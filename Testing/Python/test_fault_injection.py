"""Faults injected into running commands: ``gvsl prepare`` and ``gvsl pretrain`` killed with SIGKILL at random
(seeded) moments leave no half-written cache entry or checkpoint and resume; a full disk (writes raising ENOSPC)
gives a clear message and keeps the last good checkpoint; two ``gvsl prepare`` runs on one cache at once end with a
correct cache."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_cache import make_tiny_cache
from untrained_models import assert_killed_pretraining_resumes

from gvsl.atomic_files import is_partial
from gvsl.checkpoints import load_checkpoint
from gvsl.cli import main
from gvsl.data import PairDataset, open_cache
from gvsl.sample_data import load_mni
from gvsl.train.events import read_events
from gvsl.train.state import CHECKPOINT_DIR, list_checkpoints

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and locks")

SEED = int(os.environ.get("GVSL_FAULT_SEED", "0"))
WIDTHS = "8,8,16,16,16,16,16,8,8"
TINY_FLAGS = ["--patch", "32", "--batch", "1", "--channels", WIDTHS, "--workers", "0", "--no-tensorboard",
              "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """Eight MNI T1 heads (2 mm, each with its own intensity scale) as NIfTI files in two folders of four."""
    root = tmp_path_factory.mktemp("volumes")
    t1 = load_mni(2.0)["t1"]
    for n in range(8):
        folder = root / ("a" if n < 4 else "b")
        folder.mkdir(exist_ok=True)
        sitk.WriteImage(t1 * (1.0 + 0.1 * n), str(folder / f"head{n}.nii.gz"))
    return root


def prepare_command(source: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "gvsl", "prepare", str(source), "--cache", str(cache), "--spacing", "1.5",
            "--no-progress"]


def assert_cache_complete(cache: Path) -> int:
    """Every file in ``cache`` is the manifest, a temporary file of a killed writer, or a complete array; every usable
    manifest entry's array is complete. Returns the number of usable entries."""
    usable = 0
    if (cache / "manifest.json").exists():
        for entry in json.loads((cache / "manifest.json").read_text())["entries"]:
            if entry["status"] == "ok":
                assert list(np.load(cache / entry["file"]).shape) == entry["shape"]
                usable += 1
    for path in cache.iterdir():
        if path.name != "manifest.json" and not is_partial(path):
            assert path.suffix == ".npy" and np.load(path).ndim == 3, path
    return usable


def test_prepare_killed_at_random_moments_resumes(volumes, tmp_path):
    cache, rng = tmp_path / "cache", np.random.default_rng(SEED)
    for delay in rng.uniform(1.0, 4.0, 3):
        process = subprocess.Popen(prepare_command(volumes, cache), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if cache.exists():
            assert_cache_complete(cache)
    done = subprocess.run(prepare_command(volumes, cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "8 series used" in done.stdout
    assert assert_cache_complete(cache) == 8
    assert not any(is_partial(p) for p in cache.iterdir())  # a finished run removes what killed writers left


def test_two_prepares_on_one_cache_at_once(volumes, tmp_path):
    """Two folders prepared into one cache at the same time: the second waits for the first, so neither run's
    manifest drops the other's entries (nor deletes their arrays as unreferenced)."""
    cache = tmp_path / "cache"
    runs = [subprocess.Popen(prepare_command(volumes / name, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for name in ("a", "b")]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert any("waiting for another process that is updating the cache" in err for _, err in outputs)
    assert assert_cache_complete(cache) == 8 and len(open_cache(cache)) == 8


def spawned_workers(parent: int) -> list[int]:
    """Process ids of the multiprocessing workers (``spawn_main`` in their command line) whose parent is ``parent``
    (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == parent and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc")
def test_prepare_worker_killed_gives_a_message_and_the_next_run_finishes(volumes, tmp_path):
    """A worker that dies (the kernel's out-of-memory killer, a native crash in a reader) ends ``prepare`` with a
    message, not a traceback; what was finished is kept and the next run completes."""
    cache, rng = tmp_path / "cache", np.random.default_rng(SEED)
    process = subprocess.Popen([*prepare_command(volumes, cache), "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    while not (workers := spawned_workers(process.pid)):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.5))
    os.kill(workers[0], signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    if process.returncode == 0:  # the worker had finished its last series: nothing was lost
        pytest.skip("the killed worker was already idle")
    assert process.returncode == 1 and "Traceback" not in err, err
    assert "gvsl prepare: a worker process ended abruptly" in err and "run again to continue" in err, err
    assert_cache_complete(cache)
    done = subprocess.run(prepare_command(volumes, cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "8 series used" in done.stdout, done.stderr
    assert assert_cache_complete(cache) == 8


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("tiny"))


def test_pretrain_killed_at_a_random_moment_resumes(tiny_cache, tmp_path):
    run_dir, rng = tmp_path / "run", np.random.default_rng(SEED)
    command = [sys.executable, "-m", "gvsl", "pretrain", str(tiny_cache), "--out", str(run_dir), "--iterations",
               "1000", "--checkpoint-every", "1", "--keep-checkpoints", "2", *TINY_FLAGS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        events = run_dir / "events.jsonl"
        while not (events.exists() and any(r["event"] == "checkpoint" for r in read_events(events))):
            assert process.poll() is None, "training ended early"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere in a step or a checkpoint write
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert_killed_pretraining_resumes(run_dir)


def test_full_disk_keeps_the_last_good_checkpoint(tiny_cache, tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    run_dir = tmp_path / "run"
    assert main(["pretrain", str(tiny_cache), "--out", str(run_dir), "--iterations", "3", "--checkpoint-every", "1",
                 *TINY_FLAGS]) == 1
    error = capsys.readouterr().err
    assert "cannot write checkpoint" in error and "disk full" in error and "Traceback" not in error, error
    assert [n for n, _ in list_checkpoints(run_dir)] == [1]
    assert load_checkpoint(list_checkpoints(run_dir)[0][1])["iteration"] == 1
    assert not any(is_partial(p) for p in (run_dir / CHECKPOINT_DIR).iterdir())
    assert read_events(run_dir / "events.jsonl")[-1]["event"] == "error"
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run continues from iteration 1
    assert main(["pretrain", "--resume", str(run_dir)]) == 0
    assert [n for n, _ in list_checkpoints(run_dir)][-1] == 3


def test_a_non_finite_loss_stops_before_the_weights_change(tiny_cache, tmp_path, capsys):
    """Weights made NaN (as divergence leaves them) give a NaN loss at the next step: the run stops with a message
    and writes no checkpoint from them."""
    run_dir = tmp_path / "run"
    assert main(["pretrain", str(tiny_cache), "--out", str(run_dir), "--iterations", "1", *TINY_FLAGS]) == 0
    [(_, path)] = list_checkpoints(run_dir)
    payload = load_checkpoint(path)
    next(iter(payload["model"].values())).fill_(float("nan"))
    torch.save(payload, path)
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run_dir), "--iterations", "2"]) == 1
    error = capsys.readouterr().err
    assert "the loss is not finite (loss nan" in error and "Traceback" not in error, error
    assert [n for n, _ in list_checkpoints(run_dir)] == [1]


def test_a_cache_array_damaged_after_prepare_is_left_out_at_training_time(tiny_cache, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    entries = open_cache(cache)
    damaged = entries[0]
    (cache / damaged.file).write_bytes((cache / damaged.file).read_bytes()[:1000])  # cut, as a failing disk leaves it
    capsys.readouterr()
    dataset = PairDataset(cache, patch_size=(16, 16, 16))
    assert sorted(e.key for e in dataset.entries) == sorted(e.key for e in entries[1:])
    assert f"cache entry {damaged.key} left out: cached array missing or damaged" in capsys.readouterr().err
    a, b = next(iter(dataset))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert main(["pretrain", str(cache), "--out", str(tmp_path / "run"), "--iterations", "1", *TINY_FLAGS]) == 0
