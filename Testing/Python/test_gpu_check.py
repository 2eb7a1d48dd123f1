"""benchmarks/gpu_check.sh, the one script of GPU measurements, run in its quick mode on the CPU (so it cannot rot),
and the pre-training path it relies on, on a machine without SimpleITK, pydicom or MONAI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_cache import make_tiny_cache

from gvsl.checkpoints import load_checkpoint, load_gvsl

REPO = Path(__file__).resolve().parents[2]
# Stand-ins for the published code's modules (models/gvsl.py, utils/losses.py), with the same names and outputs.
ORIGINAL_MODEL = '''import torch
from torch import nn


class GVSL(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)

    def forward(self, a, b):
        out = self.conv(torch.cat([a, b], 1))
        return out[:, :1], out[:, 1:2], torch.eye(3, 4)[None], out[:, 1:]
'''
ORIGINAL_LOSSES = '''def ncc_loss(x, y):
    return ((x - y) ** 2).mean()


def MSE(x, y):
    return ((x - y) ** 2).mean()


def gradient_loss(flow):
    return (flow[:, :, 1:] - flow[:, :, :-1]).abs().mean()
'''
BARE = "import sys; sys.modules.update(SimpleITK=None, pydicom=None, monai=None); "  # importing them fails


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("gpu_check"))


def test_gpu_check_runs_every_section_on_the_cpu(cache, tmp_path):
    original = tmp_path / "original"
    for name, text in (("models/gvsl.py", ORIGINAL_MODEL), ("utils/losses.py", ORIGINAL_LOSSES)):
        (original / name).parent.mkdir(parents=True, exist_ok=True)
        (original / name).write_text(text)
    out = tmp_path / "out"
    completed = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--quick", "--device", "cpu",
                                "--cache", str(cache), "--original", str(original), "--out", str(out)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "gpu_check.json").read_text())
    assert summary["plan"]["batch"] == 2 and summary["plan"]["plan"] is None  # --batch auto on the CPU
    assert [(s["precision"], s["batch"], s["layout"]) for s in summary["steps"]] == [
        ("bf16", 2, "contiguous"), ("bf16", 2, "channels_last"), ("fp32", 1, "contiguous"),
        ("fp32", 1, "channels_last")]
    for record in summary["steps"]:
        assert record.get("s_per_it_mean", 0) > 0 and record.get("estimated_peak_bytes", 0) > 0, record  # shows why
        assert record["channels_last"] == (record["layout"] == "channels_last")
    assert summary["loader"]["data"] == "loader" and summary["loader"]["s_per_it_mean"] > 0
    pretrain = summary["pretrain"]
    assert pretrain["exit_status"] == 0 and pretrain["iterations"] >= 1 and pretrain["batch"] == 2, pretrain
    payload = load_checkpoint(pretrain["weights"])
    assert "optimizer" not in payload and all(v.dtype == torch.float16 for v in payload["model"].values()
                                              if v.is_floating_point())
    model, info = load_gvsl(pretrain["weights"])
    assert info.architecture == "correlation" and next(model.parameters()).dtype == torch.float32
    assert [o["cudnn_benchmark"] for o in summary["original"]] == [False, True]
    # what comes back from a device machine: a few small files (at most 8, 16 MiB each)
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "pretrain_events.jsonl", "pretrained_fp16.pt"]
    assert all(o["s_per_it_mean"] > 0 for o in summary["original"])


def test_pretraining_on_a_cache_needs_no_simpleitk_pydicom_or_monai(cache, tmp_path):
    """What a bare GPU machine runs: gvsl pretrain on a prepared cache, and the benchmark's imports."""
    run = (f"from gvsl.cli import main; sys.exit(main(['pretrain', {str(cache)!r}, '--out', {str(tmp_path / 'run')!r}, "
           "'--iterations', '1', '--patch', '32', '--channels', '4,8,8,8,8,8,8,8,4', '--workers', '0', "
           "'--no-tensorboard', '--no-progress', '--device', 'cpu']))")
    completed = subprocess.run([sys.executable, "-c", BARE + run], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch"] == 2
    imports = f"sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import gpu_check"
    completed = subprocess.run([sys.executable, "-c", BARE + imports], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
