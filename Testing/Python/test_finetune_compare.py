"""`gvsl finetune --compare`: the arms of a seed see the same batches, the held-out Dice is the Dice of
``segment_with``'s label maps, the verdict rule, stop and resume, ``--val-data``, ``random-linear``, bad plans.

Real images: blocks (40 x 48 x 48 voxels, 2 mm) of the MNI152 2009 T1 template at different places, with its grey and
white matter maps thresholded into labels 1 and 2 (nilearn wheel, as ``test_finetune``): two training cases, one
validation case named as a training case (so it is renamed), one test case. Networks are narrow (widths 8..16), crops
32^3, 4 iterations per arm-run. One comparison (4 arms x 2 seeds) is shared by the tests that read its results.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvsl.checkpoints import gvsl_payload, save_checkpoint
from gvsl.cli import main
from gvsl.finetune import Arm, FinetuneConfig, run_comparison
from gvsl.finetune import engine as engine_module
from gvsl.finetune.compare import ARMS_DIR, COMPARISON_NAME, new_summary, record_arm_run, verdict
from gvsl.finetune.data import find_split_cases
from gvsl.finetune.model import build_segmentation_net
from gvsl.finetune.sampling import PatchBatches
from gvsl.networks import GVSL
from gvsl.sample_data import load_mni, tissue_labels
from gvsl.segment import load_segmentation_model, segment_with
from gvsl.train.events import read_events

WIDTHS = (8, 8, 16, 16, 16, 16, 16, 8, 8)
BLOCK = (40, 48, 48)  # D, H, W voxels
TINY = dict(patch=32, batch=2, spacing=(2.0, 2.0, 2.0), workers=0, tensorboard=False, progress=False, log_every=1,
            iterations=4, val_every=2, val_windows=2, checkpoint_every=2, lr=1e-3)
NAMES = {1: "grey matter", 2: "white matter"}
SEEDS = [0, 1]


def _write_case(folder: Path, name: str, mni: dict, labels: np.ndarray, shift: tuple[int, int, int]) -> None:
    """The MNI block moved by ``shift`` voxels (D, H, W) from the top of the brain, as an nnU-Net case."""
    corner = [(n - b) // 2 + s for n, b, s in zip(labels.shape, BLOCK, shift)]
    box = tuple(slice(c, c + b) for c, b in zip(corner, BLOCK))
    image = mni["t1"][box[2], box[1], box[0]]
    label = sitk.GetImageFromArray(labels[box])
    label.CopyInformation(image)
    for sub, file, volume in (("imagesTr", f"{name}_0000.nii.gz", image), ("labelsTr", f"{name}.nii.gz", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume, str(folder / sub / file))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, **{n: v for v, n in NAMES.items()}}}))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("compare")
    mni = load_mni(2.0)
    labels = sitk.GetArrayFromImage(tissue_labels(mni))
    _write_case(root / "train", "mni_a", mni, labels, (6, 0, 0))
    _write_case(root / "train", "mni_b", mni, labels, (10, 6, -6))
    _write_case(root / "val", "mni_a", mni, labels, (2, -6, 6))  # named as a training case: renamed val-mni_a
    _write_case(root / "test", "mni_t", mni, labels, (8, -4, 4))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "pretrain.pt", gvsl_payload(GVSL(WIDTHS), 10))
    return {"root": root, "train": root / "train", "val": root / "val", "test": root / "test",
            "checkpoint": str(checkpoint)}


def plan(data: dict) -> tuple[FinetuneConfig, list[Arm], list[int], str]:
    """The comparison the tests share: base, four arms, two seeds, the test data."""
    base = FinetuneConfig(data=str(data["train"]), val_data=str(data["val"]), init=data["checkpoint"], **TINY)
    arms = [Arm("finetune", "finetune", data["checkpoint"]), Arm("scratch", "scratch", None),
            Arm("linear", "linear", data["checkpoint"]), Arm("random-linear", "random-linear", None)]
    return base, arms, SEEDS, str(data["test"])


@pytest.fixture(scope="module")
def compared(data) -> dict:
    """The shared comparison, recording per arm-run the training sampler's cases, its batches and the augmented
    batches the network was given."""
    drawn: dict[str, dict[str, list]] = {}
    current = {}

    def follow(record: dict) -> None:
        if record["event"] == "arm_start":
            current["run"] = record["arm"]
            drawn[record["arm"]] = {"cases": None, "batches": [], "augmented": []}

    def recorded_item(sampler, iteration):
        image, label = PatchBatches.__getitem__(sampler, iteration)
        drawn[current["run"]]["cases"] = [c.name for c in sampler.cases]
        drawn[current["run"]]["batches"].append((iteration, image.clone(), label.clone()))
        return image, label

    def recorded_augmentation(image, label, generator):
        image, label = augment_patches(image, label, generator)
        drawn[current["run"]]["augmented"].append((image.clone(), label.clone()))
        return image, label

    augment_patches = engine_module.augment_patches
    recording = type("RecordingPatchBatches", (PatchBatches,), {"__getitem__": recorded_item})
    base, arms, seeds, test_data = plan(data)
    out = data["root"] / "uninterrupted"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "PatchBatches", recording)
        patch.setattr(engine_module, "augment_patches", recorded_augmentation)
        summary = run_comparison(base, arms, seeds, out, test_data=test_data, on_event=follow)
    return {"summary": summary, "out": out, "drawn": drawn}


def test_arms_of_a_seed_see_the_same_batches(compared):
    """Every arm-run of one seed draws the same crops and labels and gives its network the same augmented batches
    (iterations 0..3); the other seed draws others."""
    drawn = compared["drawn"]
    assert list(drawn) == [f"{arm}-seed{seed}" for seed in SEEDS for arm in ("finetune", "scratch", "linear",
                                                                             "random-linear")]  # seed-major
    for seed in SEEDS:
        first, *others = [drawn[run] for run in drawn if run.endswith(f"seed{seed}")]
        assert [i for i, _, _ in first["batches"]] == [0, 1, 2, 3] and len(first["augmented"]) == 4
        assert all((label > 0).any() for _, _, label in first["batches"])
        for other in others:
            for (i, image, label), (j, other_image, other_label) in zip(first["batches"], other["batches"]):
                assert i == j and torch.equal(image, other_image) and torch.equal(label, other_label)
            for (image, label), (other_image, other_label) in zip(first["augmented"], other["augmented"]):
                assert torch.equal(image, other_image) and torch.equal(label, other_label)
    assert not torch.equal(drawn["finetune-seed0"]["batches"][0][1], drawn["finetune-seed1"]["batches"][0][1])


def _dice(predicted: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = predicted == value, truth == value
    return 2 * float(np.sum(p & t)) / float(np.sum(p) + np.sum(t))


def test_held_out_dice_is_the_dice_of_the_final_models_segmentations(compared, data):
    """Each arm-run's held-out Dice per label is the Dice, computed here by hand, between the test case's label map
    and what ``segment_with`` makes of its image with the arm-run's last checkpoint (iteration 4, not best.pt); the
    spread over seeds is the mean and sample standard deviation of the seeds' mean Dice."""
    summary, out = compared["summary"], compared["out"]
    image = sitk.ReadImage(str(data["test"] / "imagesTr" / "mni_t_0000.nii.gz"), sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data["test"] / "labelsTr" / "mni_t.nii.gz")))
    assert summary["complete"] and not summary["stopped"] and summary["labels"] == list(NAMES.values())
    for arm in summary["arms"]:
        results = summary["results"][arm["name"]]
        assert [r["seed"] for r in results["seeds"]] == SEEDS
        for entry in results["seeds"]:
            model, info = load_segmentation_model(out / entry["run"] / "checkpoints" / "iter_000004.pt")
            assert info.iteration == 4 and info.mode == arm["mode"]
            predicted = sitk.GetArrayFromImage(segment_with(model, info, image))
            by_hand = {name: _dice(predicted, truth, value) for value, name in NAMES.items()}
            assert entry["test_dice"] == pytest.approx(by_hand) and entry["test_dice_per_case"] == {"mni_t": entry[
                "test_dice"]}
            assert entry["test_mean_dice"] == pytest.approx(np.mean(list(by_hand.values())))
            assert [p[0] for p in entry["curve"]] == [2, 4] and entry["train_seconds"] >= entry["curve"][-1][1] > 0
        means = [r["test_mean_dice"] for r in results["seeds"]]
        assert results["test_mean_dice"] == pytest.approx({"mean": np.mean(means), "sd": np.std(means, ddof=1),
                                                           "n": 2})
    assert set(summary["verdicts"]) == {"finetune", "linear", "random-linear"}
    assert (out / "comparison.png").stat().st_size > 0 and json.loads((out / COMPARISON_NAME).read_text()) == summary


def test_validation_data_stay_out_of_training(compared, data):
    """With --val-data, every arm-run trains on DATA's cases only and validates on the renamed validation case;
    the split is saved in the run folder. A validation case that is a training case's file is refused."""
    for run, drawn in compared["drawn"].items():
        assert drawn["cases"] == ["mni_a", "mni_b"], run
        start = next(e for e in read_events(compared["out"] / ARMS_DIR / run / "events.jsonl") if e["event"] == "start")
        assert (start["train_cases"], start["val_cases"]) == (["mni_a", "mni_b"], ["val-mni_a"])
        split = json.loads((compared["out"] / ARMS_DIR / run / "split.json").read_text())
        assert split == {"train": ["mni_a", "mni_b"], "val": ["val-mni_a"], "collection": []}
    with pytest.raises(ValueError, match="validation case mni_a .* is also training case mni_a"):
        find_split_cases(data["train"], data["train"])


def test_random_linear_trains_the_head_only(compared, data):
    """random-linear's backbone after training is the random one it started from, its head changed; the new head
    starts the same in every mode for one seed."""
    model, _ = load_segmentation_model(compared["out"] / ARMS_DIR / "random-linear-seed0" / "checkpoints" /
                                       "iter_000004.pt")
    start = build_segmentation_net("random-linear", 3, 0, None, WIDTHS)
    assert all(torch.equal(v, start.unet.state_dict()[k]) for k, v in model.unet.state_dict().items())
    assert not torch.equal(model.head.weight, start.head.weight)
    pretrained = build_segmentation_net("finetune", 3, 0, data["checkpoint"], WIDTHS)
    assert torch.equal(pretrained.head.weight, start.head.weight)
    # the linear arm kept the checkpoint's backbone: an arm started from other weights (say, the random ones) fails
    linear, _ = load_segmentation_model(compared["out"] / ARMS_DIR / "linear-seed1" / "checkpoints" / "iter_000004.pt")
    assert all(torch.equal(v, pretrained.unet.state_dict()[k]) for k, v in linear.unet.state_dict().items())
    first = next(iter(start.unet.state_dict()))
    assert not torch.equal(pretrained.unet.state_dict()[first], start.unet.state_dict()[first])  # they differ
    assert not any(p.requires_grad for p in start.unet.parameters()) and start.head.weight.requires_grad


@pytest.mark.parametrize("differences, kind, text", [
    ([0.10, 0.12, 0.14], "pays", "pays: +0.120 mean Dice over scratch (3 of 3 seeds better)"),
    ([-0.05, -0.03, -0.04], "no benefit", "no benefit: -0.040 mean Dice against scratch (0 of 3 seeds better)"),
    ([0.0, 0.0, 0.0], "no benefit", "no benefit: +0.000 mean Dice against scratch (0 of 3 seeds better)"),
    ([0.05, -0.04, 0.02], "unclear", "unclear: the difference is within the spread over seeds (+0.010 mean Dice "
                                     "over scratch, sd 0.046, 2 of 3 seeds better)"),
    ([0.20], "unclear", "unclear: one seed gives no spread to judge by (+0.200 mean Dice over scratch); use 3 or "
                        "more seeds"),
])
def test_verdict_rule(differences, kind, text):
    """pays when the mean paired difference exceeds its standard deviation over seeds, no benefit when it is at or
    below minus it, unclear in between or with one seed."""
    judged = verdict(differences, "scratch")
    assert (judged["verdict"], judged["text"], judged["seeds"]) == (kind, text, len(differences))


def test_verdicts_pair_the_seeds_both_arms_finished():
    """The summary's spreads and verdicts from hand-made held-out Dice: only seeds both arms have are paired."""
    arms = [Arm("finetune", "finetune", "ckpt.pt"), Arm("scratch", "scratch", None)]
    summary = new_summary(FinetuneConfig(data="d", init="ckpt.pt"), arms, [0, 1, 2], None)
    summary["labels"] = ["liver"]
    for arm, seed, dice in [("finetune", 0, 0.8), ("scratch", 0, 0.7), ("finetune", 1, 0.9), ("scratch", 1, 0.7),
                            ("finetune", 2, 0.1)]:
        record_arm_run(summary, arm, {"seed": seed, "test_dice": {"liver": dice}, "test_mean_dice": dice})
    assert summary["results"]["finetune"]["test_mean_dice"] == pytest.approx(
        {"mean": 0.6, "sd": float(np.std([0.8, 0.9, 0.1], ddof=1)), "n": 3})
    assert summary["results"]["scratch"]["test_dice"] == {"liver": {"mean": pytest.approx(0.7), "sd": 0.0, "n": 2}}
    assert summary["verdicts"]["finetune"]["text"] == "pays: +0.150 mean Dice over scratch (2 of 2 seeds better)"


def test_stopped_comparison_resumes_to_the_same_summary(compared, data, capsys):
    """The shared plan again, stopped by OUT/STOP during scratch-seed0 (after finetune-seed0 was scored), then
    resumed with ``gvsl finetune --resume OUT``: finetune-seed0 is not trained again, scratch-seed0 continues from
    its checkpoint, and every held-out Dice and validation curve equals the uninterrupted comparison's."""
    base, arms, seeds, test_data = plan(data)
    out = data["root"] / "interrupted"

    def stop_in_scratch(record: dict) -> None:
        if record["event"] == "iteration" and record.get("arm") == "scratch-seed0" and record["iteration"] == 1:
            (out / "STOP").touch()

    stopped = run_comparison(base, arms, seeds, out, test_data=test_data, on_event=stop_in_scratch)
    assert stopped["stopped"] and not stopped["complete"]
    assert [len(stopped["results"][arm.name]["seeds"]) for arm in arms] == [1, 0, 0, 0]
    assert main(["finetune", "--resume", str(out), "--seeds", "3"]) == 1  # the plan cannot change
    assert main(["finetune", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "finetune" in printed and "reference" in printed and "comparison complete" in printed

    resumed = json.loads((out / COMPARISON_NAME).read_text())
    expected = compared["summary"]
    assert resumed["complete"] and not resumed["stopped"]
    for arm in arms:
        got_runs, want_runs = resumed["results"][arm.name]["seeds"], expected["results"][arm.name]["seeds"]
        assert len(got_runs) == len(want_runs) == len(SEEDS)
        for got, want in zip(got_runs, want_runs):
            assert (got["seed"], got["test_dice"], got["test_mean_dice"]) == (
                want["seed"], want["test_dice"], want["test_mean_dice"])
            assert [(i, d) for i, _, d in got["curve"]] == [(i, d) for i, _, d in want["curve"]]
    assert {a: v["text"] for a, v in resumed["verdicts"].items()} == {a: v["text"] for a, v in
                                                                       expected["verdicts"].items()}
    starts = {run: [e for e in read_events(out / ARMS_DIR / run / "events.jsonl") if e["event"] == "start"]
              for run in ("finetune-seed0", "scratch-seed0")}
    assert len(starts["finetune-seed0"]) == 1 and starts["scratch-seed0"][1]["resumed_from"].endswith("iter_000001.pt")
    events = read_events(out / "events.jsonl")
    ends = [e for e in events if e["event"] == "end"]
    assert [e["stopped"] for e in ends] == [True, False] and events[-1] is ends[-1]
    assert all("arm" not in e for e in ends) and sum(e["event"] == "arm_train_end" for e in events) == 9


def test_bad_plans_are_refused_before_anything_is_written(data, tmp_path, capsys):
    base, arms, seeds, _ = plan(data)
    out = tmp_path / "out"
    for bad, message in [(Arm("x", "nonsense", None), "'nonsense' is not a mode"),
                         (Arm("scratch", "scratch", data["checkpoint"]), "takes no checkpoint"),
                         (Arm("linear", "linear", None), "give --init"),
                         (Arm("a/b", "scratch", None), "cannot name a folder")]:
        with pytest.raises(ValueError, match=message):
            run_comparison(base, [arms[0], bad], seeds, out)
    with pytest.raises(ValueError, match="test case mni_a .* is also case mni_a"):
        run_comparison(base, arms, seeds, out, test_data=str(data["train"]))
    assert not out.exists()

    common = [str(data["train"]), "--out", str(out), "--iterations", "1", "--device", "cpu", "--no-progress"]
    for flags, message in [(["--mode", "scratch", "--compare", "linear"], "linear starts from the pre-trained model: "
                                                                          "give --init CHECKPOINT"),
                           (["--init", data["checkpoint"], "--compare", "scratch,bogus"], "bogus is not a mode"),
                           (["--mode", "scratch", "--compare", "scratch"], "each mode is trained once"),
                           (["--mode", "scratch", "--seeds", "2"], "--seeds and --test-data go with --compare")]:
        assert main(["finetune", *common, *flags]) == 1
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_trained_comparison_is_not_overwritten(compared, data):
    base, arms, seeds, test_data = plan(data)
    with pytest.raises(ValueError, match="already holds a trained comparison"):
        run_comparison(base, arms, seeds, compared["out"], test_data=test_data)
