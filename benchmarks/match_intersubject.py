"""Matches between different real brains, and of a real head under a known warp, beside classical baselines.

**Between brains** (``intersubject``): the four open Allen donors (``gvsl.synth``: their native-space
Desikan-Killiany label maps as fixed-contrast T1-like images, all 82 structures they hold kept), every unordered pair
(fixed = the first donor). Each method's fixed -> moving transform carries the moving donor's label map onto the
fixed donor's grid (nearest neighbour) and is scored by Dice per structure against the fixed donor's labels: the mean
over the structures present in the fixed map, the 68 cortical and the 14 subcortical ones apart.

**Known warp** (``known_warp``): the MNI152 T1 template (fixed) and the template under a smooth random warp of a fixed
seed (moving, ``gvsl.sample_data.random_warp``: rotation, scaling, shift, a coarse displacement field), on the
template's grid. The true correspondence is known everywhere: the mean distance of matched brain points from the
truth (template mm, ``gvsl.sample_data.correspondence_errors_mm``), and grey/white matter Dice as above.

Both report the share of fixed voxels where the transform folds (``match_methods.folding_percent``) and seconds per
pair (the registration call; for gvsl the whole in-process ``gvsl match`` call, model loading and file writing
included, Python's start-up not). Methods (``benchmarks/match_methods.py``): no registration, centres of mass
(gvsl's initial alignment), SimpleITK affine, ANTs ``SyN`` and ``antsRegistrationSyN[s]`` (antspyx defaults; a
benchmark-only extra, ``pip install antspyx==0.6.3``: the rows are skipped with a note without it), ``gvsl match
--refine 0`` (the network alone) and ``gvsl match`` (network + default refinement).

``--check`` runs the harness's own checks instead: the first donor against itself (every method must give Dice 1)
and against a copy of itself whose origin moved by a known shift (every method must beat no registration, and the
shift it recovers is printed: a transform read in the wrong direction shows as twice the shift).

    python benchmarks/match_intersubject.py --checkpoint RUN/checkpoints/iter_NNNNNN.pt [--threads 2] [--json OUT]

Prints markdown tables, then the JSON summary (one line; also written to ``--json``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import SimpleITK as sitk

from gvsl.sample_data import TISSUES, SampleHead, correspondence_errors_mm, load_mni, random_warp, tissue_labels
from gvsl.synth.datasets import write_donor_cases
from gvsl.synth.donors import OPEN_DONORS, atlas_structures

from match_methods import (  # isort: skip (a sibling script's module)
    ANTS_INSTALL, ANTS_METHODS, ants_available, ants_registration, carry_labels, centres_of_mass, dice_per_label,
    folding_percent, gvsl_match, set_threads, simpleitk_affine, summary, timed)

KNOWN_SHIFT_MM = (6.0, -4.0, 8.0)  # --check: the moving copy's origin moves by this (whole 2 mm voxels), LPS mm


class Case(NamedTuple):
    """One pair to match: image files and label maps (fixed first). ``truth``: for a known correspondence, the
    (fixed, moving) heads whose ``to_template`` give it, else None."""

    name: str
    fixed: Path
    moving: Path
    fixed_labels: Path
    moving_labels: Path
    truth: Optional[tuple[SampleHead, SampleHead]] = None


class Outcome(NamedTuple):
    """A method's answer on one case: the fixed -> moving transform and its seconds (None: not timed)."""

    transform: sitk.Transform
    seconds: Optional[float]


Method = Callable[[Case, Path], Outcome]


def read_float(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path), sitk.sitkFloat32)


def no_registration(case: Case, work: Path) -> Outcome:
    """The identity: each fixed point is taken to the same physical point of the moving scan."""
    return Outcome(sitk.Transform(3, sitk.sitkIdentity), None)


def methods(args: argparse.Namespace) -> dict[str, Method]:
    """The methods to run, by row name, in table order."""
    out: dict[str, Method] = {
        "no registration": no_registration,
        "centres of mass": lambda case, work: Outcome(centres_of_mass(read_float(case.fixed),
                                                                      read_float(case.moving)), None),
        "SimpleITK affine": lambda case, work: Outcome(*timed(lambda: simpleitk_affine(read_float(case.fixed),
                                                                                       read_float(case.moving)))),
    }
    if args.ants:
        for name in ANTS_METHODS:
            out[f"ANTs {name}"] = lambda case, work, name=name: Outcome(
                *timed(lambda: ants_registration(case.fixed, case.moving, name)))
    if args.checkpoint:
        options = ["--device", args.device, *shlex.split(args.gvsl_options)]
        out["gvsl network (--refine 0)"] = lambda case, work: gvsl_outcome(case, work / "network", args.checkpoint,
                                                                           [*options, "--refine", "0"])
        out["gvsl match (refined)"] = lambda case, work: gvsl_outcome(case, work / "refined", args.checkpoint,
                                                                      options)
    return out


def gvsl_outcome(case: Case, out: Path, checkpoint: str, options: list[str]) -> Outcome:
    match = gvsl_match(case.fixed, case.moving, checkpoint, out, options)
    return Outcome(match.final, match.seconds)


def donor_cases(work: Path, spacing_mm: float) -> list[Case]:
    """The open donors as T1-like images with all their labels; every unordered pair, fixed = the first."""
    written = write_donor_cases(work / "donors", OPEN_DONORS, spacing_mm, values=sorted(atlas_structures()))
    return [Case(f"{a}->{b}", written[a][0], written[b][0], written[a][1], written[b][1])
            for a, b in itertools.combinations(OPEN_DONORS, 2)]


def check_cases(work: Path, spacing_mm: float) -> list[Case]:
    """The first donor against itself, and against a copy of itself moved by ``KNOWN_SHIFT_MM`` (the copy's point
    p + shift shows what the original shows at p: the true fixed -> moving map is x -> x + shift, and the copy's
    ``to_template``, copy point -> original point, is q -> q - shift)."""
    donor = OPEN_DONORS[0]
    image, labels = write_donor_cases(work / "donors", (donor,), spacing_mm, values=sorted(atlas_structures()))[donor]
    shifted = []
    for path in (image, labels):
        moved = sitk.ReadImage(str(path))
        moved.SetOrigin(tuple(np.asarray(moved.GetOrigin()) + KNOWN_SHIFT_MM))
        shifted.append(work / "shifted" / path.parent.name / path.name)
        shifted[-1].parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(moved, str(shifted[-1]), useCompression=True)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    unshift = sitk.TranslationTransform(3, tuple(-s for s in KNOWN_SHIFT_MM))
    return [Case("self", image, image, labels, labels, (SampleHead(image, labels, identity),) * 2),
            Case("known shift", image, shifted[0], labels, shifted[1],
                 (SampleHead(image, labels, identity), SampleHead(shifted[0], shifted[1], unshift)))]


def known_warp_case(work: Path, spacing_mm: float, seed: int) -> Case:
    """The MNI152 T1 template (fixed) and the template under ``random_warp`` of ``seed`` (moving), on one grid, with
    their grey/white matter label maps (``tissue_labels``)."""
    mni = load_mni(spacing_mm)
    template, labels = mni["t1"], tissue_labels(mni)
    warp = random_warp(template, np.random.default_rng(seed))  # moving point -> template point
    paths = {name: work / "known_warp" / f"{name}.nii.gz"
             for name in ("fixed", "moving", "fixed_labels", "moving_labels")}
    paths["fixed"].parent.mkdir(parents=True, exist_ok=True)
    images = {"fixed": template, "fixed_labels": labels,
              "moving": sitk.Resample(template, template, warp, sitk.sitkLinear, 0.0, sitk.sitkFloat32),
              "moving_labels": sitk.Resample(labels, labels, warp, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)}
    for name, image in images.items():
        sitk.WriteImage(image, str(paths[name]), useCompression=True)
    truth = (SampleHead(paths["fixed"], paths["fixed_labels"], sitk.Transform(3, sitk.sitkIdentity)),
             SampleHead(paths["moving"], paths["moving_labels"], warp))
    return Case("known warp", paths["fixed"], paths["moving"], paths["fixed_labels"], paths["moving_labels"], truth)


def score(case: Case, outcome: Outcome, points: int) -> dict:
    """Dice per structure present in the fixed labels, folding, seconds and, with a known truth, point errors."""
    fixed_labels, moving_labels = (sitk.ReadImage(str(p)) for p in (case.fixed_labels, case.moving_labels))
    present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(fixed_labels)) if v]
    carried = carry_labels(moving_labels, fixed_labels, outcome.transform)
    out = {"dice": dice_per_label(fixed_labels, carried, present),
           "folding_percent": folding_percent(outcome.transform, fixed_labels), "seconds": outcome.seconds}
    if case.truth is not None:
        out["errors_mm"] = correspondence_errors_mm(*case.truth, outcome.transform, points)
    return out


def run_cases(cases: list[Case], chosen: dict[str, Method], work: Path, points: int) -> dict[str, list[dict]]:
    """Every method on every case: method -> one score per case (printed as it goes)."""
    scores: dict[str, list[dict]] = {name: [] for name in chosen}
    for n, case in enumerate(cases):
        for name, method in chosen.items():
            scores[name].append(score(case, method(case, work / f"case-{n}"), points))
            s = scores[name][-1]
            error = f", error {s['errors_mm'].mean():.2f} mm" if "errors_mm" in s else ""
            seconds = f", {s['seconds']:.1f} s" if s["seconds"] is not None else ""
            print(f"{case.name}: {name}: Dice {np.mean(list(s['dice'].values())):.4f}{error}, folding "
                  f"{s['folding_percent']:.3f} %{seconds}", flush=True)
    return scores


def mean_or_none(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def dice_row(per_case: list[dict], groups: dict[str, set[int]]) -> dict:
    """Dice means over each group's structures (per case, then over cases), per structure, folding, seconds."""
    row = {}
    for group, values in groups.items():
        means = [np.mean([d for v, d in s["dice"].items() if v in values]) for s in per_case]
        row[f"dice_{group}"] = float(np.mean(means))
        row[f"pair_dice_{group}"] = [float(m) for m in means]
    structures = sorted(set().union(*(s["dice"] for s in per_case)))
    row["dice_per_structure"] = {str(v): float(np.mean([s["dice"][v] for s in per_case if v in s["dice"]]))
                                 for v in structures}
    row["folding_percent"] = float(np.mean([s["folding_percent"] for s in per_case]))
    row["folding_percent_max"] = float(max(s["folding_percent"] for s in per_case))
    row["seconds_per_pair"] = mean_or_none([s["seconds"] for s in per_case])
    if all("errors_mm" in s for s in per_case):
        row.update(summary(np.concatenate([s["errors_mm"] for s in per_case])))
        row["pair_means_mm"] = [float(s["errors_mm"].mean()) for s in per_case]
    return row


def atlas_groups() -> dict[str, set[int]]:
    structures = atlas_structures()
    cortex = {v for v, s in structures.items() if s.kind == "cortex"}
    return {"all": set(structures), "cortex": cortex, "subcortex": set(structures) - cortex}


def text(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_intersubject(rows: dict[str, dict]) -> None:
    print("\n| method | Dice, all structures | cortex (68) | subcortex (14) | worst pair | folding % (max) | "
          "s per pair |\n|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['dice_all']:.4f} | {r['dice_cortex']:.4f} | {r['dice_subcortex']:.4f} | "
              f"{min(r['pair_dice_all']):.4f} | {r['folding_percent']:.3f} ({r['folding_percent_max']:.3f}) | "
              f"{text(r['seconds_per_pair'], 1)} |")


def print_known_warp(rows: dict[str, dict]) -> None:
    print("\n| method | mean error (mm) | median | 90th percentile | grey matter Dice | white matter Dice | "
          "folding % | s |\n|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        gm, wm = (r["dice_per_structure"][str(v)] for v in TISSUES)
        print(f"| {name} | {r['mean_mm']:.2f} | {r['median_mm']:.2f} | {r['p90_mm']:.2f} | {gm:.4f} | {wm:.4f} | "
              f"{r['folding_percent']:.3f} | {text(r['seconds_per_pair'], 1)} |")


def print_check(cases: list[Case], scores: dict[str, list[dict]]) -> bool:
    """The check's table; True when a self-pair gives Dice 1 and the known shift beats no registration for every
    method."""
    print("\n| method | self-pair Dice | self-pair error (mm) | shifted pair Dice | shift error (mm) |\n"
          "|---|---|---|---|---|")
    unregistered = np.mean(list(scores["no registration"][1]["dice"].values()))
    passed = True
    for name, (self_pair, shifted) in scores.items():
        self_dice, shifted_dice = (float(np.mean(list(s["dice"].values()))) for s in (self_pair, shifted))
        print(f"| {name} | {self_dice:.4f} | {self_pair['errors_mm'].mean():.3f} | {shifted_dice:.4f} | "
              f"{shifted['errors_mm'].mean():.3f} |")
        passed &= self_dice > 0.999 and (name == "no registration" or shifted_dice > unregistered)
    print(f"\nknown shift {KNOWN_SHIFT_MM} mm; no registration misses it by {np.linalg.norm(KNOWN_SHIFT_MM):.2f} mm; "
          + ("every method passes" if passed else "SOME METHOD FAILS (see above)"))
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="GVSL checkpoint for the gvsl rows (without one they are skipped)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size of the images, mm (default 2)")
    parser.add_argument("--points", type=int, default=2000, help="brain points for the known warp (default 2000)")
    parser.add_argument("--warp-seed", type=int, default=3, help="seed of the known warp (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads of torch, SimpleITK and ANTs (default 1)")
    parser.add_argument("--gvsl-options", default="", help="extra options for both gvsl rows, e.g. '--refine 100'")
    parser.add_argument("--only", choices=("intersubject", "known-warp"), help="run one of the two parts")
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="rows to run (names as in the table)")
    parser.add_argument("--no-ants", dest="ants", action="store_false", help="skip the ANTs rows")
    parser.add_argument("--check", action="store_true", help="the harness's own checks (see the module doc)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the JSON summary here")
    parser.add_argument("--work", type=Path, help="keep the images and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.ants and not ants_available():
        print(f"note: antspyx is not installed, so the ANTs rows are skipped ({ANTS_INSTALL})")
        args.ants = False
    chosen = methods(args)
    if args.methods:
        unknown = set(args.methods) - set(chosen)
        if unknown:
            parser.error(f"unknown or unavailable methods {sorted(unknown)}; choose from {list(chosen)}")
        chosen = {name: method for name, method in chosen.items() if name in args.methods}
    result = {"checkpoint": args.checkpoint, "spacing_mm": args.spacing, "threads": args.threads,
              "gvsl_options": args.gvsl_options, "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        if args.check:
            chosen.setdefault("no registration", no_registration)
            cases = check_cases(work, args.spacing)
            passed = print_check(cases, run_cases(cases, chosen, work / "check", args.points))
            raise SystemExit(0 if passed else 1)
        if args.only != "known-warp":
            scores = run_cases(donor_cases(work, args.spacing), chosen, work / "intersubject", args.points)
            result["intersubject"] = {name: dice_row(s, atlas_groups()) for name, s in scores.items()}
        if args.only != "intersubject":
            case = known_warp_case(work, args.spacing, args.warp_seed)
            scores = run_cases([case], chosen, work / "known_warp", args.points)
            result["known_warp"] = {name: dice_row(s, {"all": set(TISSUES)}) for name, s in scores.items()}
    result["load_average_end"] = os.getloadavg()
    if "intersubject" in result:
        print_intersubject(result["intersubject"])
    if "known_warp" in result:
        print_known_warp(result["known_warp"])
    print(f"\nload average {result['load_average_start'][0]:.2f} at the start, {result['load_average_end'][0]:.2f} "
          f"at the end; {args.threads} thread(s)")
    line = json.dumps(result)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
