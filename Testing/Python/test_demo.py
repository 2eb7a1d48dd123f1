"""`gvsl demo`, shortened: a real sample collection, 2 iterations of a tiny network, matching and outputs."""
from __future__ import annotations

import SimpleITK as sitk
from PIL import Image

from gvsl.checkpoints import load_checkpoint
from gvsl.cli import main


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "2", "--patch", "32", "--log-every", "1",
                 "--channels", "4,4,8,8,8,8,8,4,4"]) == 0
    printed = capsys.readouterr().out
    assert "iteration    2/2  mean loss" in printed and str(out / "match" / "panel.png") in printed
    assert load_checkpoint(out / "run" / "checkpoints" / "iter_000002.pt")["iteration"] == 2
    fixed = sitk.ReadImage(str(out / "match" / "fixed.nii.gz"))
    for name in ("moving", "warped"):
        image = sitk.ReadImage(str(out / "match" / f"{name}.nii.gz"))
        assert image.GetSize() == fixed.GetSize()
        assert image.GetSpacing() == fixed.GetSpacing() and image.GetOrigin() == fixed.GetOrigin()
    panel = Image.open(out / "match" / "panel.png")
    assert panel.mode == "L" and panel.size[0] > 4 * min(fixed.GetSize())  # four columns
