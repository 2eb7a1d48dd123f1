"""Checkpoints: atomic saving, safe loading, clear errors for the wrong file or architecture."""
from __future__ import annotations

import argparse
import errno
import os
import stat

import pytest
import torch

from gvsl.atomic_files import write_text_atomically
from gvsl.checkpoints import gvsl_payload, load_checkpoint, load_gvsl, save_checkpoint
from gvsl.networks import GVSL

SMALL = (8, 8, 16, 16, 16, 16, 16, 8, 8)


def test_round_trip_keeps_weights_widths_and_conventions(tmp_path):
    model = GVSL(channels=SMALL, conventions="original")
    save_checkpoint(tmp_path / "c.pt", gvsl_payload(model, 7, config={"lr": 1e-4}))
    loaded, info = load_gvsl(tmp_path / "c.pt")
    assert (info.kind, info.channels, info.conventions, info.iteration) == ("gvsl", SMALL, "original", 7)
    assert loaded.conventions == "original"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_round_trip_keeps_the_correlation_architecture(tmp_path):
    model = GVSL(channels=SMALL, architecture="correlation")
    save_checkpoint(tmp_path / "c.pt", gvsl_payload(model, 3))
    loaded, info = load_gvsl(tmp_path / "c.pt")
    assert info.architecture == loaded.architecture == "correlation"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_published_small_state_dict_infers_widths(tmp_path):
    model = GVSL(channels=SMALL)
    torch.save(model.state_dict(), tmp_path / "p.pth")
    _, info = load_gvsl(tmp_path / "p.pth")
    assert info == type(info)("published", SMALL, "original", None)


def test_pickled_code_is_refused(tmp_path):
    # e.g. a training script that saved its argparse namespace next to the weights
    torch.save({"model": GVSL(channels=SMALL).state_dict(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="code execution"):
        load_checkpoint(tmp_path / "evil.pt")


def test_truncated_file_is_named(tmp_path):
    save_checkpoint(tmp_path / "c.pt", gvsl_payload(GVSL(channels=SMALL), 1))
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt is not a readable PyTorch file .truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_wrong_architecture_names_keys(tmp_path):
    state = GVSL(channels=SMALL).state_dict()
    state.pop("fc_rot.weight")
    state["extra.weight"] = torch.zeros(1)
    state["out_flow.bias"] = torch.zeros(4)
    with pytest.raises(ValueError) as err:
        load_gvsl({"format": "gvsl", "model": state, "channels": list(SMALL), "conventions": "corrected"})
    message = str(err.value)
    assert "missing keys: fc_rot.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "out_flow.bias (4,) != (3,)" in message


def test_not_a_gvsl_file(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a GVSL state dict"):
        load_gvsl(tmp_path / "other.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, gvsl_payload(GVSL(channels=SMALL), 1))
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, gvsl_payload(GVSL(channels=SMALL), 2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "c.pt", {"x": 1})


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask_like_ordinary_writes(tmp_path, umask):
    """Checkpoints, config files, cache arrays and manifests (all written atomically) get the permissions an
    ordinary write gets, so a run or a cache can be shared (0644 under the usual umask 022)."""
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", gvsl_payload(GVSL(channels=SMALL), 1))
        write_text_atomically(tmp_path / "config.json", "{}")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("c.pt", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
