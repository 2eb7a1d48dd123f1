"""`gvsl finetune`: learning on a real labelled volume, the three modes, exact resume, data layouts and bad inputs.

The labelled volume is real: a 56 x 56 x 48 block (2 mm) of the MNI152 2009 T1 template with its grey and white
matter maps (nilearn wheel) thresholded into labels 1 and 2. Networks are narrow (widths 8..16), crops 32^3.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvsl.checkpoints import gvsl_payload, load_checkpoint, save_checkpoint
from gvsl.cli import main
from gvsl.data.preprocess import PrepareConfig
from gvsl.finetune import FinetuneConfig, find_cases, run_finetune
from gvsl.finetune.cache import prepare_cases
from gvsl.finetune.validation import choose_validation_windows, window_dice
from gvsl.networks import GVSL
from gvsl.sample_data import load_mni, tissue_labels
from gvsl.segment import load_segmentation_model, segment_image
from gvsl.segment.inference import FP32
from gvsl.segment.model import SegmentationNet
from gvsl.train.events import read_events

WIDTHS = (8, 8, 16, 16, 16, 16, 16, 8, 8)
TINY = dict(patch=32, batch=2, channels=WIDTHS, spacing=(2.0, 2.0, 2.0), workers=0, tensorboard=False,
            progress=False, log_every=1)


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict:
    """nnU-Net folder with the MNI block and its tissue labels, plus a GVSL checkpoint and published state dict."""
    root = tmp_path_factory.mktemp("finetune")
    mni = load_mni(2.0)
    labels = sitk.GetArrayFromImage(tissue_labels(mni))
    corner = [(n - s) // 2 for n, s in zip(labels.shape, (48, 56, 56))]
    corner[0] += 6  # towards the top of the brain: both tissues everywhere in the block
    box = tuple(slice(c, c + s) for c, s in zip(corner, (48, 56, 56)))
    image = mni["t1"][corner[2]:corner[2] + 56, corner[1]:corner[1] + 56, corner[0]:corner[0] + 48]
    label = sitk.GetImageFromArray(labels[box])
    label.CopyInformation(image)
    data = root / "nnunet"
    _write(image, data / "imagesTr" / "mni_0000.nii.gz")
    _write(label, data / "labelsTr" / "mni.nii.gz")
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "grey matter": 1,
                                                              "white matter": 2}}))
    torch.manual_seed(0)
    pretrained = GVSL(WIDTHS)
    ours = save_checkpoint(root / "pretrain.pt", gvsl_payload(pretrained, 10))
    published = root / "published.pth"
    torch.save(pretrained.state_dict(), published)
    return {"root": root, "data": data, "image": image, "label": label, "ours": ours, "published": published,
            "labels": labels[box]}


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    return 2 * np.sum((a == value) & (b == value)) / (np.sum(a == value) + np.sum(b == value))


def test_finetune_learns_real_tissue_labels(real, tmp_path):
    """Fine-tuning (from the published state dict; no augmentation, poly schedule from lr 5e-3) reaches a mean
    training Dice > 0.8 within 60 iterations (0.86 measured); the best model then segments the volume through the
    public API with Dice > 0.75 per tissue and the dataset.json names."""
    settings = {**TINY, "log_every": 20}
    config = FinetuneConfig(data=str(real["data"]), out=str(tmp_path / "run"), init=str(real["published"]),
                            iterations=60, val_every=60, checkpoint_every=60, lr=5e-3, augment=False, **settings)
    result = run_finetune(config)
    assert result.best_dice > 0.8, result.best_dice
    events = read_events(tmp_path / "run" / "events.jsonl")
    validations = [e for e in events if "val_dice" in e]
    assert [e["iteration"] for e in validations] == [60]
    assert set(validations[-1]["val_dice_per_class"]) == {"grey matter", "white matter"}
    assert events[0]["event"] == "start" and events[0]["warnings"] and events[-1]["event"] == "end"

    label, table = segment_image(real["image"], tmp_path / "run")
    assert [e["name"] for e in table["labels"]] == ["grey matter", "white matter"]
    predicted = sitk.GetArrayFromImage(label)
    for value in (1, 2):
        assert _dice(predicted, real["labels"], value) > 0.75


@pytest.mark.parametrize("mode", ["linear", "scratch"])
def test_modes(real, tmp_path, mode):
    """linear trains the head only (backbone equals the checkpoint's); scratch needs no --init."""
    init = str(real["ours"]) if mode == "linear" else None
    config = FinetuneConfig(data=str(real["data"]), out=str(tmp_path / mode), init=init, mode=mode, iterations=3,
                            val_every=3, **TINY)
    result = run_finetune(config)
    model, info = load_segmentation_model(result.checkpoint)
    assert info.mode == mode and info.iteration == 3 and info.channels == WIDTHS
    if mode == "linear":
        backbone = load_checkpoint(real["ours"])["model"]
        assert all(torch.equal(v, backbone[f"unet.{k}"]) for k, v in model.unet.state_dict().items())


def test_with_a_collection_the_checkpoint_matches_and_the_network_starts_from_random_weights(real):
    """``--unlabelled`` without ``--mode``: scratch, the network of the scratch arm (``--init``'s widths, the same
    seeded draw, none of the checkpoint's weights); ``--init`` is then the matching network. Without a collection,
    and with ``--mode finetune``, the network starts from the checkpoint as before."""
    from gvsl.finetune.compare import Arm, arm_config
    from gvsl.finetune.model import build_segmentation_net

    common = dict(data=str(real["data"]), out="run", init=str(real["ours"]))
    assert FinetuneConfig(**common, unlabelled="scans").mode == "scratch"
    assert FinetuneConfig(**common).mode == FinetuneConfig(**common, unlabelled="scans", mode="finetune").mode \
        == "finetune"
    started = build_segmentation_net("scratch", 3, 0, init=str(real["ours"]))
    scratch = build_segmentation_net("scratch", 3, 0, channels=WIDTHS)
    backbone = load_checkpoint(real["ours"])["model"]
    assert started.channels == WIDTHS
    assert all(torch.equal(v, scratch.state_dict()[k]) for k, v in started.state_dict().items())
    assert not all(torch.equal(v, backbone[f"unet.{k}"]) for k, v in started.unet.state_dict().items())
    arm = arm_config(FinetuneConfig(**common, unlabelled="scans"), Arm("collection", "scratch", None, "scans"), 0)
    assert (arm.init, arm.match_checkpoint) == (None, str(real["ours"]))


def test_widths_must_match_init(real, tmp_path):
    config = FinetuneConfig(data=str(real["data"]), out=str(tmp_path / "run"), init=str(real["ours"]),
                            iterations=1, **{**TINY, "channels": (8, 8, 16, 16, 32, 16, 16, 8, 8)})
    with pytest.raises(ValueError, match="does not fit a network of widths.*mis-shaped"):
        run_finetune(config)


def test_resume_is_exact(real, tmp_path):
    """Stopped at iteration 3 (STOP file) and resumed to 6 equals 6 uninterrupted iterations."""
    common = dict(data=str(real["data"]), init=str(real["ours"]), iterations=6, val_every=6, lr=1e-3, **TINY)
    straight = run_finetune(FinetuneConfig(out=str(tmp_path / "a"), **common))

    def stop_at_3(record):
        if record["event"] == "iteration" and record["iteration"] == 3:
            (tmp_path / "b" / "STOP").touch()

    stopped = run_finetune(FinetuneConfig(out=str(tmp_path / "b"), **common), on_event=stop_at_3)
    assert stopped.stopped and stopped.iteration == 3
    assert main(["finetune", "--resume", str(tmp_path / "b"), "--no-progress"]) == 0
    a = load_checkpoint(straight.checkpoint)["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "iter_000006.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["finetune", "--resume", str(tmp_path / "b"), "--lr", "1"]) == 1  # defines the run: refused


def test_pair_lists_and_label_names(real, tmp_path, capsys):
    """CSV and the Slicer export (pairs.json + labels.json) list the same case; without a table, names are values."""
    image, label = real["data"] / "imagesTr" / "mni_0000.nii.gz", real["data"] / "labelsTr" / "mni.nii.gz"
    (tmp_path / "pairs.csv").write_text(f"image,label\n{image},{label}\n")
    cases, table = find_cases(tmp_path / "pairs.csv")
    assert [(c.image, c.label) for c in cases] == [(image, label)] and table is None
    export = tmp_path / "export"
    export.mkdir()
    (export / "pairs.json").write_text(json.dumps([{"name": "case1", "image": str(image), "label": str(label)}]))
    (export / "labels.json").write_text(json.dumps({"labels": [{"value": 2, "name": "WM", "color": [1, 1, 1]}]}))
    cases, table = find_cases(export)
    assert cases[0].name == "case1" and table == export / "labels.json"
    assert main(["finetune", str(export), "--mode", "scratch", "--out", str(tmp_path / "run"), "--iterations", "1",
                 "--patch", "32", "--batch", "1", "--channels", ",".join(map(str, WIDTHS)), "--spacing", "2",
                 "--workers", "0", "--no-tensorboard", "--no-progress", "--device", "cpu"]) == 0
    errors = capsys.readouterr().err  # the single case's note, as a plain line (no Python warning, no source line)
    assert errors.startswith("gvsl finetune: note: a single labelled case: validation reuses the training case(s)")
    assert "Warning" not in errors and errors.count("\n") == 1, errors
    saved = json.loads((tmp_path / "run" / "labels.json").read_text())["labels"]
    assert [(e["value"], e["name"]) for e in saved] == [(1, "1"), (2, "WM")]


def _pair(tmp_path: Path, image: sitk.Image, label: sitk.Image) -> Path:
    _write(image, tmp_path / "bad" / "imagesTr" / "case7_0000.nii.gz")
    _write(label, tmp_path / "bad" / "labelsTr" / "case7.nii.gz")
    return tmp_path / "bad"


@pytest.mark.parametrize("problem, message", [
    ("geometry", "case case7: image and label do not share geometry"),
    ("float", "case case7: label .* non-integer values"),
    ("2d", "case case7: image .* is 2D"),
])
def test_bad_inputs_name_the_case(real, tmp_path, problem, message):
    image, label = real["image"], real["label"]
    if problem == "geometry":
        label = sitk.Image(label)
        label.SetOrigin([o + 4.0 for o in label.GetOrigin()])
    elif problem == "float":
        label = sitk.Cast(label, sitk.sitkFloat32) * 0.5
    else:
        image, label = image[:, :, 20], label[:, :, 20]
    data = _pair(tmp_path, image, label)
    config = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), mode="scratch", iterations=1, **TINY)
    with pytest.raises(ValueError, match=message):
        run_finetune(config)


def test_validation_split():
    """A fifth of the cases (at least one, never all) is held out, reproducibly; one case validates on itself."""
    from gvsl.finetune.engine import split_cases

    cases = [f"case{i}" for i in range(7)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 1 and sorted(train + val) == cases and split_cases(cases, 0.2, seed=3) == (train, val)
    assert split_cases(cases[:1], 0.2, seed=0) == (cases[:1], cases[:1])
    assert len(split_cases(cases[:2], 0.9, seed=0)[0]) == 1


class IntensityClasses(torch.nn.Module):
    """Logits of class c: -(x - centre_c)^2, a fixed classifier of the T1 intensities (background, grey, white)."""

    centres = torch.tensor([0.05, 0.45, 0.75])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x - self.centres.view(1, -1, 1, 1, 1)) ** 2


def test_window_dice_is_the_pooled_overlap(real, tmp_path):
    """Validation windows are fixed by the seed, foreground windows hold labels, and their Dice is 2|P and T| /
    (|P| + |T|) of all windows together, per class (computed here by hand)."""
    [case] = prepare_cases(find_cases(real["data"])[0], tmp_path / "cache", PrepareConfig(target_spacing=(2.0,) * 3))
    windows = choose_validation_windows([case], [1, 2], (32, 32, 32), 5, foreground=1.0, seed=4)
    again = choose_validation_windows([case], [1, 2], (32, 32, 32), 5, foreground=1.0, seed=4)
    assert windows.images.shape == (5, 1, 32, 32, 32) and windows.labels.shape == (5, 32, 32, 32)
    assert torch.equal(windows.images, again.images) and torch.equal(windows.labels, again.labels)
    assert all(label.any() for label in windows.labels)
    result = window_dice(IntensityClasses(), windows, 3, 2, FP32, torch.device("cpu"), torch.contiguous_format)
    predicted = IntensityClasses()(windows.images).argmax(dim=1)
    for c in (1, 2):
        p, t = predicted == c, windows.labels == c
        assert result.dice[c - 1] == pytest.approx(2 * float((p & t).sum()) / float(p.sum() + t.sum()))
    assert 0.1 < min(result.dice) and max(result.dice) < 1.0  # real, imperfect overlaps, not of empty sets
    assert np.array_equal(result.predicted, predicted[0].numpy()) and np.array_equal(result.truth, windows.labels[0])


@pytest.mark.parametrize("val_windows, windows", [(4, 4), (0, 18)])
def test_validation_cost(real, tmp_path, monkeypatch, val_windows, windows):
    """A validation costs val_windows / batch forward passes (2 here); whole volumes (val_windows 0) take the
    sliding windows of the volume (18 windows of 32^3 with overlap 0.5 on 48 x 56 x 56 voxels, in pairs: 9
    passes, 2 windows each)."""
    evaluated = []
    forward = SegmentationNet.forward

    def counting_forward(model, x):
        if not model.training:
            evaluated.append(len(x))
        return forward(model, x)

    monkeypatch.setattr(SegmentationNet, "forward", counting_forward)
    config = FinetuneConfig(data=str(real["data"]), out=str(tmp_path / "run"), mode="scratch", iterations=1,
                            val_windows=val_windows, **TINY)
    result = run_finetune(config)
    assert sum(evaluated) == windows and len(evaluated) == windows // 2 and result.best_dice is not None


def test_fast_kernels_are_chosen_for_the_run_device(real, tmp_path, monkeypatch):
    """Fine-tuning asks for cuDNN autotuning on its device as pre-training does (it acts on CUDA only)."""
    import gvsl.finetune.engine as engine

    devices = []
    monkeypatch.setattr(engine, "use_fast_kernels", devices.append)
    run_finetune(FinetuneConfig(data=str(real["data"]), out=str(tmp_path / "run"), mode="scratch", iterations=1,
                                device="cpu", **TINY))
    assert devices == [torch.device("cpu")]
