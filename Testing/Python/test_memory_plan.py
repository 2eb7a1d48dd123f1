"""``--batch auto``: the memory plan (pure arithmetic), its resolution on a run's device, what the run records, and
the GPU defaults (layout, cuDNN autotuning); all on the CPU (a GPU's free memory is given, not measured)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_cache import make_tiny_cache

from gvsl.networks import DEFAULT_CHANNELS, GVSL
from gvsl.train import auto_batch
from gvsl.train.config import AUTO_BATCH, TrainConfig, parse_batch, resolve_config
from gvsl.train.device import select_precision, use_channels_last, use_fast_kernels
from gvsl.train.distributed import DistributedContext
from gvsl.train.memory_plan import (
    DEFAULT_WIDTHS,
    GIB,
    PAPER_PARAMETERS,
    USABLE_FRACTION,
    NotEnoughMemoryError,
    estimate_peak_bytes,
    plan_memory,
)

CROP = (128, 128, 128)


@pytest.fixture(scope="module")
def correlation_parameters() -> int:
    return sum(p.numel() for p in GVSL(architecture="correlation").parameters())


def _plan(free_gib: float, parameters: int, precision: str = "bf16", **kw):
    return plan_memory(int(free_gib * GIB), CROP, DEFAULT_CHANNELS, "correlation", precision, parameters, **kw)


def test_calibration_constants_match_the_network():
    assert DEFAULT_WIDTHS == DEFAULT_CHANNELS
    assert PAPER_PARAMETERS == sum(p.numel() for p in GVSL(architecture="paper").parameters())
    # the calibration reproduces the measured H200 peaks it was made from (paper architecture)
    for precision, batch, measured in (("bf16", 2, 24.9e9), ("fp32", 1, 14.3e9)):
        estimate = estimate_peak_bytes(batch, CROP, DEFAULT_CHANNELS, "paper", precision, PAPER_PARAMETERS, False)
        assert estimate == pytest.approx(measured, rel=1e-6)


def test_plans_for_80_24_12_and_8_gib_cards(correlation_parameters):
    big = _plan(79, correlation_parameters)  # an 80 GB card: the paper's recipe as it is
    assert (big.batch, big.activation_checkpointing, big.patch) == (2, False, CROP)
    card_24 = _plan(23, correlation_parameters)  # a 24 GB card: the paper's crops at batch 2, with checkpointing
    assert (card_24.batch, card_24.patch) == (2, CROP) and card_24.activation_checkpointing
    assert card_24.estimated_peak_bytes <= 23 * GIB * USABLE_FRACTION
    assert "batch 2 at 128x128x128 with activation checkpointing" in card_24.message
    assert "batch 2 at 128x128x128 would need about 35.4 GiB free" in card_24.message  # why checkpointing
    card_12 = _plan(11.3, correlation_parameters)
    assert (card_12.batch, card_12.activation_checkpointing, card_12.patch) == (1, True, CROP)
    card_8 = _plan(7.4, correlation_parameters)
    assert card_8.batch == 1 and card_8.activation_checkpointing and card_8.patch < CROP
    assert f"batch 1 at {'x'.join(map(str, card_8.patch))} with activation checkpointing" in card_8.message
    assert "7.4 GiB free" in card_8.message
    fp32 = _plan(23, correlation_parameters, precision="fp32")
    assert fp32.estimated_peak_bytes <= 23 * GIB * USABLE_FRACTION


def test_too_little_memory_names_the_memory_and_the_smallest_configuration(correlation_parameters):
    with pytest.raises(NotEnoughMemoryError, match=r"1\.0 GiB free on the GPU is too little for the smallest "
                                                   r"configuration, batch 1 at 64x64x64 with activation checkpointing"):
        _plan(1.0, correlation_parameters)


def test_asked_for_checkpointing_is_kept(correlation_parameters):
    plan = _plan(79, correlation_parameters, activation_checkpointing=True)
    assert (plan.batch, plan.activation_checkpointing, plan.patch) == (2, True, CROP)


def test_the_plan_is_monotonic_in_memory(correlation_parameters):
    previous = None
    for tenth in range(20, 1000, 5):  # 2 ... 99.5 GiB
        free = tenth / 10
        plan = _plan(free, correlation_parameters)
        assert plan.estimated_peak_bytes <= free * GIB * USABLE_FRACTION
        if previous is not None:  # more memory never gives a smaller crop, nor a smaller batch at the same crop
            assert plan.patch >= previous.patch
            assert plan.patch > previous.patch or plan.batch >= previous.batch
            assert plan.estimated_peak_bytes >= previous.estimated_peak_bytes or plan.patch > previous.patch
        previous = plan


def test_parse_batch():
    assert parse_batch("auto") == AUTO_BATCH and parse_batch("3") == 3 and parse_batch(2) == 2
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="batch"):
            parse_batch(bad)
    assert TrainConfig().batch == AUTO_BATCH


def test_auto_on_the_cpu_is_the_papers_batch():
    model = GVSL(channels=(4, 8, 8, 8, 8, 8, 8, 8, 4))
    cpu = torch.device("cpu")
    config, plan = auto_batch.resolve_batch(TrainConfig(), model, cpu, select_precision("auto", cpu),
                                            DistributedContext())
    assert (config.batch, plan) == (2, None)
    given = TrainConfig(batch=3)
    assert auto_batch.resolve_batch(given, model, cpu, select_precision("auto", cpu), DistributedContext()) == \
        (given, None)


def test_auto_on_a_gpu_uses_its_free_memory(monkeypatch, correlation_parameters):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(11.3 * GIB), 12 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Twelve GB card")
    model = GVSL(architecture="correlation")
    cuda = torch.device("cuda", 0)
    config, plan = auto_batch.resolve_batch(TrainConfig(), model, cuda, select_precision("bf16", cuda),
                                            DistributedContext())
    assert (config.batch, config.activation_checkpointing, config.patch) == (1, True, CROP)
    assert plan == plan_memory(int(11.3 * GIB), CROP, DEFAULT_CHANNELS, "correlation", "bf16", correlation_parameters,
                               device="cuda:0 (Twelve GB card)")
    assert "on cuda:0 (Twelve GB card)" in plan.message


def test_resume_keeps_the_resolved_batch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TrainConfig(data="x", batch=1).to_dict(),
                                                      "activation_checkpointing": True}))
    resumed = resolve_config(TrainConfig, {"batch": AUTO_BATCH}, resume_dir=tmp_path)  # not planned again
    assert (resumed.batch, resumed.activation_checkpointing) == (1, True)
    with pytest.raises(ValueError, match="cannot change: batch"):
        resolve_config(TrainConfig, {"batch": 2}, resume_dir=tmp_path)


def test_a_run_records_the_resolved_batch(tmp_path):
    from gvsl.pretrain.engine import run_training
    from gvsl.train.events import read_events

    cache = make_tiny_cache(tmp_path)
    config = TrainConfig(data=str(cache), out=str(tmp_path / "run"), iterations=1, patch=32, device="cpu",
                         channels=(4, 8, 8, 8, 8, 8, 8, 8, 4), workers=0, tensorboard=False, progress=False)
    assert config.batch == AUTO_BATCH
    run_training(config)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch"] == 2
    start = read_events(tmp_path / "run" / "events.jsonl")[0]
    assert start["config"]["batch"] == 2 and start["memory_plan"] is None


def test_gpu_defaults_contiguous_layout_and_cudnn_autotuning(monkeypatch):
    fp32, bf16 = select_precision("fp32", torch.device("cpu")), select_precision("bf16", torch.device("cpu"))
    assert not use_channels_last(None, torch.device("cuda", 0), DEFAULT_CHANNELS, bf16)  # measured faster on an H200
    assert use_channels_last(True, torch.device("cuda", 0), DEFAULT_CHANNELS, bf16)  # the flag still wins
    assert use_channels_last(None, torch.device("cpu"), DEFAULT_CHANNELS, fp32)
    assert not use_channels_last(None, torch.device("cpu"), (4, 8, 8, 8, 8, 8, 8, 8, 4), fp32)
    assert not use_channels_last(None, torch.device("cpu"), DEFAULT_CHANNELS, bf16)  # its backward is not reliable
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    use_fast_kernels(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    use_fast_kernels(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True


def test_pretraining_imports_neither_monai_nor_pydicom():
    code = ("import sys; import gvsl.commands.pretrain, gvsl.pretrain.engine, gvsl.train.auto_batch; "
            "from gvsl.train.config import TrainConfig; TrainConfig(); "
            "print(sorted(m for m in ('monai', 'pydicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
