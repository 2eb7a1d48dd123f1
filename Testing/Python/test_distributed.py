"""Pre-training with DistributedDataParallel: two CPU processes (Gloo) launched by torchrun.

The test runs this file under ``torchrun --nproc_per_node=2``; each rank
trains a few iterations and saves its final weights to a file, and the test
checks that both ranks hold identical weights, equal to rank 0's checkpoint,
and that only rank 0 wrote the run folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny_cache import make_tiny_cache

from gvsl.checkpoints import load_checkpoint
from gvsl.pretrain.engine import pair_batches, run_training
from gvsl.train.config import TrainConfig
from gvsl.train.distributed import DistributedContext
from gvsl.train.events import read_events
from gvsl.train.state import list_checkpoints

WIDTHS = (8, 8, 16, 16, 16, 16, 16, 8, 8)


def tiny_config(cache: Path, out: Path, iterations: int) -> TrainConfig:
    return TrainConfig(data=str(cache), out=str(out), iterations=iterations, patch=32, batch=1, channels=WIDTHS,
                       workers=0, device="cpu", checkpoint_every=iterations, log_every=1, tensorboard=False,
                       progress=False)


def test_ranks_draw_different_pairs(tmp_path):
    cache = make_tiny_cache(tmp_path)
    config = tiny_config(cache, tmp_path / "run", 2)
    first = [next(pair_batches(cache, config, DistributedContext(rank, 2), torch.device("cpu"), 0))[0]
             for rank in (0, 1)]
    assert not torch.equal(first[0], first[1])


def test_two_processes_hold_identical_weights(tmp_path):
    cache = make_tiny_cache(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               str(cache), str(tmp_path / "run"), str(tmp_path / "weights")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / "weights" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    checkpoint = load_checkpoint(list_checkpoints(tmp_path / "run")[-1][1])
    assert checkpoint["iteration"] == 3 and checkpoint["world_size"] == 2
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
        assert torch.equal(value, checkpoint["model"][key]), key
    assert any(not torch.equal(v, ranks[0][k]) for k, v in _initial_weights().items())  # it did train
    starts = [r for r in read_events(tmp_path / "run" / "events.jsonl") if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # only rank 0 writes events


def test_readme_torchrun_command_line(tmp_path):
    """``torchrun --nproc_per_node=2 -m gvsl pretrain DATA --out RUN_DIR`` as the README shows it (CPU, Gloo): one
    run folder, one final checkpoint recording both processes, one ``start`` event, one summary line printed."""
    cache = make_tiny_cache(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gvsl",
               "pretrain", str(cache), "--out", str(tmp_path / "run"), "--iterations", "2", "--patch", "32",
               "--batch", "1", "--channels", ",".join(map(str, WIDTHS)), "--workers", "0", "--device", "cpu",
               "--no-tensorboard", "--no-progress"]
    completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [i for i, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[-1][1])["world_size"] == 2
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [r["event"] for r in events].count("start") == 1 and events[-1]["event"] == "end"
    assert completed.stdout.count("gvsl pretrain: finished at iteration 2") == 1


def _initial_weights() -> dict[str, torch.Tensor]:
    from gvsl.networks import GVSL
    from gvsl.train.state import derive_seed

    torch.manual_seed(derive_seed(0, "init"))
    return GVSL(channels=WIDTHS).state_dict()


def _rank_main(cache: str, out: str, weights: str) -> None:
    """One torchrun rank: train 3 iterations, save this rank's final weights."""
    result = run_training(tiny_config(Path(cache), Path(out), iterations=3))
    Path(weights).mkdir(exist_ok=True)
    torch.save(result.model.state_dict(), Path(weights) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    _rank_main(*sys.argv[1:4])
