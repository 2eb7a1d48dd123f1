"""`gvsl segment`: exact output geometry (oblique, anisotropic input), physical correctness of the mapping back to
the input grid, post-processing, label tables, and clear errors for wrong models and inputs.

Models are narrow (widths 8..16) with random weights: these tests are about geometry and plumbing (learning is
tested in test_finetune.py). Images are the real MNI152 T1 template (nilearn wheel) at 2 mm.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvsl.checkpoints import gvsl_payload, load_checkpoint, save_checkpoint
from gvsl.cli import main
from gvsl.labels import from_nnunet, make_label_table, read_label_table, sidecar_path
from gvsl.networks import GVSL
from gvsl.sample_data import load_mni
from gvsl.segment import SegmentationInfo, SegmentationNet, predict_probabilities, segment_image, segmentation_payload
from gvsl.segment.inference import window_starts
from gvsl.segment.segment import keep_largest_components, to_input_grid

WIDTHS = (8, 8, 16, 16, 16, 16, 16, 8, 8)
TABLE = make_label_table([1, 4], {1: "grey matter", 4: "white matter"})
PREPROCESSING = {"target_spacing": [2.0, 2.0, 2.0], "ct_window": [-1024.0, 1024.0], "mr_percentiles": [0.5, 99.5],
                 "modality": "MR"}


@pytest.fixture(scope="module")
def mni():
    return load_mni(2.0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = SegmentationNet(3, WIDTHS)
    info = SegmentationInfo(WIDTHS, 3, TABLE, PREPROCESSING, (48, 48, 48), "finetune", 7)
    return save_checkpoint(tmp_path_factory.mktemp("segment") / "model.pt", segmentation_payload(net, info))


def oblique_grid(reference: sitk.Image) -> sitk.Image:
    """A rotated (about three axes), anisotropic (1.5 x 2.5 x 3.5 mm) grid centred on ``reference``'s centre."""
    direction = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.4).GetMatrix()
    size, spacing = np.array([30, 24, 12]), np.array([1.5, 2.5, 3.5])
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()]))
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction)
    grid.SetOrigin((centre - np.reshape(direction, (3, 3)) @ ((size - 1) * spacing / 2)).tolist())
    return grid


def test_output_has_the_input_geometry(mni, model_file, tmp_path):
    """Oblique, anisotropic input: the label map has exactly its size, spacing, origin and direction (API and CLI,
    NRRD out with the table alongside, with largest components)."""
    image = sitk.Resample(mni["t1"], oblique_grid(mni["t1"]), sitk.Transform(), sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    label, table = segment_image(image, model_file, overlap=0.25, sw_batch_size=1)
    assert table == TABLE
    for what in ("Size", "Spacing", "Origin", "Direction"):
        assert getattr(label, f"Get{what}")() == getattr(image, f"Get{what}")(), what
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 4}

    sitk.WriteImage(image, str(tmp_path / "oblique.nii.gz"))
    out = tmp_path / "seg" / "labels.nrrd"
    assert main(["segment", str(tmp_path / "oblique.nii.gz"), "--model", str(model_file), "--out", str(out),
                 "--largest-component", "--device", "cpu"]) == 0
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetSpacing(), image.GetSpacing()) and np.allclose(written.GetOrigin(),
                                                                                 image.GetOrigin())
    assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    assert read_label_table(sidecar_path(out)) == TABLE


def test_mapping_back_to_the_input_grid_is_physical(mni):
    """Class probabilities on the canonical grid, taken back to an oblique grid, agree with resampling the label
    map itself (nearest neighbour) in physical space."""
    gm, wm = (sitk.GetArrayFromImage(mni[k]) for k in ("gm", "wm"))
    classes = np.where(wm > 0.5, 2, np.where(gm > 0.5, 1, 0)).astype(np.uint8)
    probabilities = np.eye(3, dtype=np.float32)[classes].transpose(3, 0, 1, 2)
    canonical = mni["t1"]
    reference = oblique_grid(canonical)
    on_reference = to_input_grid(probabilities, canonical, reference)
    mapped = on_reference.argmax(axis=0)
    label = sitk.GetImageFromArray(classes)
    label.CopyInformation(canonical)
    expected = sitk.GetArrayFromImage(sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor))
    assert mapped.shape == expected.shape
    assert np.mean(mapped == expected) > 0.9
    shifted = sitk.Image(canonical.GetSize(), sitk.sitkFloat32)
    shifted.CopyInformation(canonical)
    half = canonical.GetSize()[0] // 2
    shifted.SetOrigin(canonical.TransformIndexToPhysicalPoint((half, 0, 0)))
    beyond = to_input_grid(probabilities, canonical, shifted)[:, :, :, -half + 1:]  # right of the canonical grid
    assert np.all(beyond[0] == 1.0) and np.all(beyond[1:] == 0.0)  # there the background has probability 1
    assert np.array_equal(to_input_grid(probabilities, canonical, canonical), probabilities)  # same grid: untouched


def test_probabilities_sum_to_one(mni, model_file):
    net = SegmentationNet(3, WIDTHS)
    net.load_state_dict(load_checkpoint(model_file)["model"])
    volume = torch.rand(1, 1, 20, 30, 18)
    windowed = predict_probabilities(net.eval(), volume, (16, 32, 16))  # 2 x 1 x 2 windows
    whole = predict_probabilities(net, volume, (32, 32, 32), sw_batch_size=4)  # 1 window
    assert windowed.shape == whole.shape == (1, 3, 20, 30, 18)
    assert torch.allclose(windowed.sum(1), torch.ones(1, 20, 30, 18), atol=1e-4)
    assert torch.allclose(whole.sum(1), torch.ones(1, 20, 30, 18), atol=1e-4)


@pytest.mark.parametrize("size,window,overlap", [(91, 48, 0.5), (109, 48, 0.25), (48, 48, 0.5), (30, 48, 0.5),
                                                  (100, 16, 0.0), (17, 16, 0.9)])
def test_windows_cover_every_voxel_and_end_flush(size, window, overlap):
    starts = window_starts(size, window, overlap)
    covered = np.zeros(size, bool)
    for start in starts:
        covered[start:start + window] = True
    assert covered.all() and starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] == max(size - window, 0)  # never beyond the volume
    assert all(b - a <= max(1, int(window * (1 - overlap))) for a, b in zip(starts, starts[1:]))


def test_a_voxelwise_model_gives_its_whole_volume_answer():
    """A 1x1x1 convolution sees nothing beyond its voxel, so the blended windows must give exactly its softmax over
    the whole volume: a window placed or weighted wrongly shows."""
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 3, 1).eval()
    volume = torch.rand(1, 1, 37, 50, 29)
    expected = torch.softmax(model(volume), dim=1).detach()
    got = predict_probabilities(model, volume, (16, 32, 16), overlap=0.4, sw_batch_size=3)
    assert torch.allclose(got, expected, atol=1e-6)


def test_windows_and_blending_follow_monai(mni, monkeypatch):
    """Our windows are MONAI ``sliding_window_inference``'s (equal with uniform weights) and blend as its Gaussian
    mode, with which the Dice of benchmarks/RESULTS.md were first measured, on a real head at 2 mm (91 x 109 x 91)."""
    from monai.inferers import sliding_window_inference

    import gvsl.segment.inference as inference

    torch.manual_seed(0)
    net = SegmentationNet(3, WIDTHS).eval()
    array = sitk.GetArrayFromImage(mni["t1"])
    volume = torch.from_numpy(array / array.max()).float()[None, None]

    def theirs(mode):
        with torch.inference_mode():
            return sliding_window_inference(volume, (48, 48, 48), 2, lambda x: torch.softmax(net(x), dim=1),
                                            overlap=0.5, mode=mode)

    gaussian = predict_probabilities(net, volume, (48, 48, 48))
    assert (gaussian - theirs("gaussian")).abs().mean() < 0.004  # uniform weights differ by 0.011
    monkeypatch.setattr(inference, "blending_weights", lambda window: torch.ones(tuple(window)))
    assert torch.allclose(predict_probabilities(net, volume, (48, 48, 48)), theirs("constant"), atol=1e-5)


def test_largest_component():
    classes = np.zeros((8, 8, 8), np.uint8)
    classes[0:3, 0:3, 0:3] = 1
    classes[6:8, 6:8, 6:8] = 1  # smaller, disconnected: removed
    classes[5, 0, 0] = 2
    kept = keep_largest_components(classes, 3)
    assert np.sum(kept == 1) == 27 and kept[7, 7, 7] == 0 and kept[5, 0, 0] == 2


def test_wrong_models_and_inputs(mni, model_file, tmp_path, capsys):
    image = mni["t1"]
    torch.manual_seed(0)
    pretrained = GVSL(WIDTHS)
    ours = save_checkpoint(tmp_path / "pretrain.pt", gvsl_payload(pretrained, 5))
    published = tmp_path / "published.pth"
    torch.save(pretrained.state_dict(), published)
    for path in (ours, published):
        with pytest.raises(ValueError, match="pre-training checkpoint.*gvsl finetune"):
            segment_image(image, path)
    payload = load_checkpoint(model_file)
    payload["channels"] = [8, 8, 16, 16, 32, 16, 16, 8, 8]
    other = save_checkpoint(tmp_path / "widths.pt", payload)
    with pytest.raises(ValueError, match="widths.pt: its weights do not fit.*mis-shaped: unet.down4"):
        segment_image(image, other)
    with pytest.raises(ValueError, match="2D image"):
        segment_image(image[:, :, 30], model_file)
    sitk.WriteImage(image, str(tmp_path / "t1.nii.gz"))
    assert main(["segment", str(tmp_path / "t1.nii.gz"), "--model", str(ours), "--out", str(tmp_path / "x.nii.gz")
                 ]) == 1
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    for path, message in ((tmp_path / "missing.nii.gz", "missing.nii.gz does not exist"),
                          (junk, "cannot read " + str(junk))):
        assert main(["segment", str(path), "--model", str(model_file), "--out", str(tmp_path / "y.nii.gz")]) == 1
        assert message in capsys.readouterr().err


def test_label_tables(tmp_path):
    v2 = from_nnunet({"labels": {"background": 0, "liver": 1, "spleen": 3}})
    v1 = from_nnunet({"labels": {"0": "background", "1": "liver", "3": "spleen"}})
    assert v1 == v2 and [(e["value"], e["name"]) for e in v2["labels"]] == [(1, "liver"), (3, "spleen")]
    assert all(len(e["color"]) == 3 and all(0 <= c <= 1 for c in e["color"]) for e in v2["labels"])
    assert sidecar_path(tmp_path / "seg.nii.gz") == tmp_path / "seg.labels.json"
    (tmp_path / "bad.json").write_text(json.dumps({"labels": [{"value": 0, "name": "x"}]}))
    with pytest.raises(ValueError, match="bad.json"):
        read_label_table(tmp_path / "bad.json")
