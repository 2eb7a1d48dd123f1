"""Does pre-training pay on my data? ``run_comparison`` trains the same segmentation network in several arms (from the
pre-trained checkpoint, from scratch, frozen backbones...) on the same cases, crops, seeds and budget, and scores each
arm-run's final model on held-out cases as ``gvsl segment`` would.

**Same conditions.** Each (arm, seed) is an ordinary fine-tuning run (``run_finetune``) made from one base
configuration with only ``mode``, ``init``, ``seed`` and its folder replaced, and the backbone widths fixed for every
arm (the base's, else the checkpoints', which must agree): same iterations, batch, patch, learning rate and schedule.
Everything random in the data is a pure function of the seed (``gvsl.finetune.engine``: the split, the crops, their
augmentation and the validation windows use generators derived from the seed, never the global torch generator that
initialises the network), so the arm-runs of one seed see the same batches. All arm-runs share one preprocessing
cache, prepared by the first.

**Order.** Seed-major: every arm for the first seed, then every arm for the next, so results are paired early.

**Held-out score.** After an arm-run ends, its final model (the last iteration's checkpoint, not ``best.pt``: nothing
is selected on the cases scored) segments every held-out case whole (``gvsl.finetune.heldout``, in the input's
geometry) and its Dice per label is recorded. Held-out cases: ``test_data`` when given, else the validation cases
(``val_data``, else the seed's split of DATA, so without either each seed holds out its own cases).

**Verdict rule** (per arm against the reference, the first arm of mode "scratch", paired over the seeds both have
finished): d_s = the arm's held-out mean Dice minus the reference's for seed s; m = the mean of the d_s and sd their
sample standard deviation. Fewer than two seeds: "unclear" (no spread to judge by). Otherwise "pays" when m > sd,
"no benefit" when m <= -sd, and "unclear" in between (the difference is within the spread over seeds). m > sd asks
the gain to exceed its own seed-to-seed variation, so (nearly) every seed is better: t = m / (sd / sqrt(n)) > sqrt(n),
a one-sided p of about 0.1 for 3 seeds and 0.04 for 5.

OUT holds::

    config.json           the base configuration (``gvsl finetune --resume OUT`` reads it, as for a run)
    comparison.json       plan and results, rewritten atomically after every arm-run (``new_summary``)
    comparison.png        validation Dice against iterations and training time (``gvsl.finetune.comparison_chart``)
    events.jsonl          comparison_start (arms, seeds, arm_runs); every event of every arm-run with
                          "arm": "<arm>-seed<k>", its start/end/error renamed arm_start/arm_train_end/arm_error
                          (so that no arm-run's end reads as the comparison's); arm_end (held-out Dice); stop (a stop
                          between arm-runs); end (stopped, complete, verdicts, held_out_dice) or error
    cache/                the preprocessing cache (unless the base names another)
    arms/<arm>-seed<k>/   the arm-runs' run folders

**Stop and resume.** A signal, or a ``STOP`` file in OUT or in the current arm-run's folder, stops the current
arm-run (checkpoint saved) and the comparison. ``resume=True`` skips finished arm-runs, resumes a stopped one, starts
the rest and rewrites the summary; the base may change only in ``FinetuneConfig.RESUME_OVERRIDABLE`` (device,
workers, ...).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from gvsl.atomic_files import write_text_atomically
from gvsl.finetune.cache import read_label
from gvsl.finetune.comparison_chart import ArmCurves, write_comparison_chart
from gvsl.finetune.config import MODES, PRETRAINED_MODES, FinetuneConfig
from gvsl.finetune.data import Case, find_cases, find_split_cases
from gvsl.finetune.engine import choose_label_table, run_finetune
from gvsl.finetune.heldout import held_out_dice
from gvsl.finetune.matching_arm import matching_dice
from gvsl.finetune.model import backbone_state
from gvsl.labels import label_values
from gvsl.networks import DEFAULT_CHANNELS
from gvsl.segment.model import load_segmentation_model
from gvsl.train.config import CONFIG_NAME, read_config_file, save_config
from gvsl.train.device import select_device
from gvsl.train.distributed import context_from_environment
from gvsl.train.events import EVENTS_NAME, EventLog, read_events
from gvsl.train.run import CACHE_NAME
from gvsl.train.state import latest_checkpoint, list_checkpoints
from gvsl.train.stopping import StopRequest, clear_stop_file

COMPARISON_NAME = "comparison.json"
CHART_NAME = "comparison.png"
ARMS_DIR = "arms"
FORMAT = "gvsl-finetune-comparison"
VERSION = 1
REFERENCE_MODE = "scratch"
MATCHING_MODE = "matching"
MATCHING_DIR = "matching"
FORWARDED = {"start": "arm_start", "end": "arm_train_end", "error": "arm_error"}  # an arm-run's event -> OUT's
SUMMARY_FIELDS = ("data", "val_data", "iterations", "batch", "patch", "channels", "lr", "schedule", "weight_decay",
                  "foreground", "augment", "val_every", "val_windows", "spacing", "device", "precision")
_FOLDER_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Arm:
    """One way of training the network: ``name`` (folder-safe), ``mode`` (one of ``MODES``, or ``MATCHING_MODE``:
    no training, labels carried by matching), ``init`` (the checkpoint for "finetune"/"linear", the matching network
    for "matching" or None; None for "scratch"/"random-linear"), ``unlabelled`` (a folder of unlabelled scans to
    train on too: ``--unlabelled``)."""

    name: str
    mode: str
    init: Optional[str]
    unlabelled: Optional[str] = None


def arm_run_name(arm: str, seed: int) -> str:
    """The folder and event name of one arm's run with one seed: ``<arm>-seed<k>``."""
    return f"{arm}-seed{seed}"


def check_plan(arms: Sequence[Arm], seeds: Sequence[int]) -> None:
    """ValueError, saying what is wrong, unless the arms have distinct folder-safe names, known modes and a checkpoint
    exactly where the mode needs one, and the seeds are distinct (at least one of each)."""
    if not arms:
        raise ValueError("a comparison needs at least one arm")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must differ, got {', '.join(names)}")
    for arm in arms:
        if not _FOLDER_SAFE.match(arm.name):
            raise ValueError(f"arm name {arm.name!r} cannot name a folder (letters, digits, '_', '.', '-')")
        if arm.mode not in (*MODES, MATCHING_MODE):
            raise ValueError(f"arm {arm.name}: {arm.mode!r} is not a mode; the modes are {', '.join(MODES)}, "
                             f"{MATCHING_MODE}")
        if arm.mode in PRETRAINED_MODES and not arm.init:
            raise ValueError(f"arm {arm.name} ({arm.mode}) starts from the pre-trained model: give --init CHECKPOINT")
        if arm.mode not in (*PRETRAINED_MODES, MATCHING_MODE) and arm.init:
            raise ValueError(f"arm {arm.name} ({arm.mode}) starts from random weights, so it takes no checkpoint")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"a comparison needs one or more distinct seeds, got {list(seeds)}")


def shared_widths(base: FinetuneConfig, arms: Sequence[Arm]) -> tuple[int, ...]:
    """The backbone widths of every arm: ``base.channels``, else those of the arms' checkpoints and ``base.init``
    (as a single run's random-weight modes take ``init``'s), else the default; ValueError when a checkpoint has others
    (the arms would train different networks)."""
    inits = {arm.init for arm in arms if arm.init and arm.mode != MATCHING_MODE} | ({base.init} if base.init else set())
    found = {init: tuple(backbone_state(init)[1]) for init in sorted(inits)}
    widths = tuple(base.channels or next(iter(found.values()), DEFAULT_CHANNELS))
    for init, init_widths in found.items():
        if init_widths != widths:
            raise ValueError(f"checkpoint {init} has widths {','.join(map(str, init_widths))}, the comparison's "
                             f"network {','.join(map(str, widths))}: every arm must train the same network")
    return widths


def arm_config(base: FinetuneConfig, arm: Arm, seed: int) -> FinetuneConfig:
    """The configuration of ``arm``'s run with ``seed``: ``base`` (whose ``out`` is the comparison's folder) with
    ``mode``, ``init``, ``unlabelled``, ``seed`` and the run folder replaced (not for the matching arm); the
    collection is matched by ``base``'s matching network (``match_checkpoint``, else ``init``) in every arm."""
    return replace(base, mode=arm.mode, init=arm.init, seed=seed, unlabelled=arm.unlabelled,
                   match_checkpoint=base.match_checkpoint or base.init,
                   out=str(Path(base.out) / ARMS_DIR / arm_run_name(arm.name, seed)))


def spread(values: Sequence[float]) -> dict:
    """``mean``, ``sd`` (sample standard deviation; None below two values) and ``n`` of ``values``."""
    n = len(values)
    return {"mean": float(np.mean(values)) if n else None, "sd": float(np.std(values, ddof=1)) if n > 1 else None,
            "n": n}


def verdict(differences: Sequence[float], reference: str) -> dict:
    """The verdict (module doc) on paired differences of held-out mean Dice (arm minus ``reference``, one per seed):
    ``verdict`` ("pays", "no benefit" or "unclear"), ``text`` (a sentence), ``against``, ``seeds``, ``better`` (seeds
    where the arm is better), ``mean_difference`` and ``sd``."""
    stats = spread(differences)
    m, sd, n = stats["mean"], stats["sd"], stats["n"]
    better = sum(d > 0 for d in differences)
    direction = f"{m:+.3f} mean Dice {'over' if m > 0 else 'against'} {reference}"
    seeds = f"{better} of {n} seeds better"
    if n < 2:
        kind, text = "unclear", f"unclear: one seed gives no spread to judge by ({direction}); use 3 or more seeds"
    elif m > sd:
        kind, text = "pays", f"pays: {direction} ({seeds})"
    elif m <= -sd:
        kind, text = "no benefit", f"no benefit: {direction} ({seeds})"
    else:
        kind, text = "unclear", (f"unclear: the difference is within the spread over seeds ({direction}, sd {sd:.3f}, "
                                 f"{seeds})")
    return {"verdict": kind, "text": text, "against": reference, "seeds": n, "better": better, "mean_difference": m,
            "sd": sd}


def verdicts(summary: dict) -> dict[str, dict]:
    """The verdict of every non-reference arm against the reference arm, over the seeds both have finished."""
    reference = summary["reference"]
    if reference is None:
        return {}
    scores = {arm["name"]: {r["seed"]: r["test_mean_dice"] for r in summary["results"][arm["name"]]["seeds"]
                            if r["test_mean_dice"] is not None} for arm in summary["arms"]}
    out = {}
    for arm in summary["arms"]:
        paired = [s for s in scores[arm["name"]] if s in scores[reference]]
        if arm["name"] != reference and paired:
            out[arm["name"]] = verdict([scores[arm["name"]][s] - scores[reference][s] for s in paired], reference)
    return out


def config_summary(base: FinetuneConfig) -> dict:
    """The settings of ``base`` that a reader of the summary needs (the whole configuration is OUT/config.json)."""
    return {k: base.to_dict()[k] for k in SUMMARY_FIELDS}


def new_summary(base: FinetuneConfig, arms: Sequence[Arm], seeds: Sequence[int], test_data: Optional[str]) -> dict:
    """``comparison.json`` before any arm-run: the plan (configuration summary, arms, seeds, held-out cases) and
    empty results. Each finished arm-run adds to ``results[arm]["seeds"]`` (``record_arm_run``)."""
    reference = next((arm.name for arm in arms if arm.mode == REFERENCE_MODE), None)
    held_out = "test data" if test_data else "validation data" if base.val_data else "validation split of DATA"
    return {"format": FORMAT, "version": VERSION, "config": config_summary(base),
            "arms": [asdict(arm) for arm in arms], "seeds": list(seeds), "test_data": test_data, "held_out": held_out,
            "reference": reference, "labels": [], "notes": [], "complete": False, "stopped": False,
            "results": {arm.name: {"seeds": [], "test_mean_dice": spread([]), "test_dice": {}} for arm in arms},
            "verdicts": {}}


def training_curve(events: Sequence[dict]) -> tuple[list[list], float]:
    """[iteration, training seconds, validation mean Dice] at each validation of a run (lists, as in JSON), and its
    training seconds in all, from its events: seconds since each ``start`` event summed over the run's starts (the
    pause before a resume is left out; iterations repeated after a resume from an earlier checkpoint keep their last
    values)."""
    curve: list[list] = []
    done, started, last = 0.0, None, None
    for event in events:
        if event["event"] == "start":
            done += last - started if started is not None else 0.0
            started = last = event["time"]
        elif started is not None:
            last = event["time"]
            if event["event"] == "iteration" and event.get("val_dice") is not None:
                curve = [p for p in curve if p[0] < event["iteration"]]
                curve.append([event["iteration"], round(done + last - started, 3), event["val_dice"]])
    return curve, round(done + (last - started if started is not None else 0.0), 3)


def record_arm_run(summary: dict, arm: str, entry: dict) -> None:
    """Add one arm-run's ``entry`` (``seed``, ``test_dice``, ``test_mean_dice``, ...) to ``summary`` and update the
    arm's spreads over seeds and the verdicts."""
    results = summary["results"][arm]
    results["seeds"] = sorted([*(r for r in results["seeds"] if r["seed"] != entry["seed"]), entry],
                              key=lambda r: summary["seeds"].index(r["seed"]))
    results["test_mean_dice"] = spread([r["test_mean_dice"] for r in results["seeds"]
                                        if r["test_mean_dice"] is not None])
    results["test_dice"] = {name: spread([r["test_dice"][name] for r in results["seeds"]
                                          if r["test_dice"].get(name) is not None]) for name in summary["labels"]}
    summary["verdicts"] = verdicts(summary)


def format_spread(stats: dict) -> str:
    """``0.812 ± 0.021 (3 seeds)``, ``0.812 (1 seed)``, or ``-`` without values (``stats`` from ``spread``)."""
    if not stats["n"]:
        return "-"
    sd = f" ± {stats['sd']:.3f}" if stats["sd"] is not None else ""
    return f"{stats['mean']:.3f}{sd} ({stats['n']} seed{'s' if stats['n'] > 1 else ''})"


def summary_table(summary: dict) -> str:
    """One line per arm: its name, held-out mean Dice over seeds and its verdict (``reference`` for the reference)."""
    rows = [("arm", "held-out Dice", "verdict")]
    for arm in summary["arms"]:
        name = arm["name"]
        judged = "reference" if name == summary["reference"] else summary["verdicts"].get(name, {}).get("text", "")
        rows.append((name, format_spread(summary["results"][name]["test_mean_dice"]), judged))
    widths = [max(len(row[k]) for row in rows) for k in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows)


def chart_curves(summary: dict) -> list[ArmCurves]:
    """Each arm's finished arm-runs' validation curves, labelled with its held-out Dice."""
    curves = []
    for arm in summary["arms"]:
        name = arm["name"] if arm["name"] == arm["mode"] else f"{arm['name']} ({arm['mode']})"
        results = summary["results"][arm["name"]]
        curves.append(ArmCurves(f"{name}: held-out Dice {format_spread(results['test_mean_dice'])}",
                                [r["curve"] for r in results["seeds"]]))
    return curves


def write_summary(summary: dict, out: Path) -> None:
    """``comparison.json`` and ``comparison.png``, each written atomically."""
    write_text_atomically(out / COMPARISON_NAME, json.dumps(summary, indent=1) + "\n")
    done = sum(len(r["seeds"]) for r in summary["results"].values())
    title = (f"Fine-tuning comparison, {summary['config']['iterations']} iterations per run: validation Dice "
             f"(thick: mean over seeds, light: each seed); {done} of {len(summary['arms']) * len(summary['seeds'])} "
             "runs done")
    write_comparison_chart(chart_curves(summary), title, out / CHART_NAME)


def read_plan(out: Path | str) -> tuple[list[Arm], list[int], Optional[str]]:
    """The arms, seeds and test data of the comparison in ``out``; ValueError when ``out`` holds none."""
    path = Path(out) / COMPARISON_NAME
    if not path.is_file():
        raise ValueError(f"{out} holds no comparison to resume (no {COMPARISON_NAME})")
    summary = json.loads(path.read_text(encoding="utf-8"))
    return [Arm(**arm) for arm in summary["arms"]], list(summary["seeds"]), summary["test_data"]


def _resumed_summary(base: FinetuneConfig, arms: Sequence[Arm], seeds: Sequence[int], out: Path,
                     test_data: Optional[str]) -> dict:
    """The saved summary of the comparison in ``out``; ValueError unless it was planned with these arms, seeds and
    test data and a base that differs only in settings a resume may change."""
    saved_arms, saved_seeds, saved_test = read_plan(out)
    if (saved_arms, saved_seeds, saved_test) != (list(arms), list(seeds), test_data):
        raise ValueError(f"--resume continues the comparison in {out} as planned: its arms, seeds and test data "
                         "cannot change (start a new comparison to change them)")
    saved = FinetuneConfig.from_dict(read_config_file(out / CONFIG_NAME), source=str(out / CONFIG_NAME))
    changed = [f.name for f in fields(FinetuneConfig)
               if f.name not in FinetuneConfig.RESUME_OVERRIDABLE and getattr(base, f.name) != getattr(saved, f.name)]
    if changed:
        raise ValueError(f"--resume continues the comparison in {out} as configured; these settings cannot change: "
                         f"{', '.join(changed)}")
    return json.loads((out / COMPARISON_NAME).read_text(encoding="utf-8"))


def holds_training(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint of a run or of an arm-run. A new comparison refuses such a folder (nothing
    trained is overwritten) and reuses one left by a comparison that failed before its first checkpoint."""
    return bool(list_checkpoints(out)) or any(list_checkpoints(run) for run in (out / ARMS_DIR).glob("*"))


def check_test_cases(test_cases: Sequence[Case], used: Sequence[Case]) -> None:
    """ValueError for a test case whose image is one of the ``used`` (training or validation) cases' images."""
    images = {case.image.resolve(): case.name for case in used}
    for case in test_cases:
        if case.image.resolve() in images:
            raise ValueError(f"test case {case.name} ({case.image}) is also case {images[case.image.resolve()]} of the "
                             "training or validation data: --test-data must hold other cases")


def score_matching_arm(base: FinetuneConfig, arm: Arm, seed: int, labelled: Sequence[Case], held_out: Sequence[Case],
                       table_file: Optional[Path], out: Path) -> dict:
    """The matching arm's entry for ``seed`` (the same for every seed: nothing in it is random): held-out Dice of the
    labelled cases' labels carried onto each held-out case (``matching_dice``; matches kept in OUT/matching), the
    seconds it took as ``train_seconds``."""
    started = time.perf_counter()
    present = {int(v) for case in labelled for v in np.unique(sitk.GetArrayViewFromImage(read_label(case))) if v}
    table = choose_label_table(base, table_file, present)
    values, names = label_values(table), [e["name"] for e in table["labels"]]
    score = matching_dice(labelled, held_out, values, names, out / MATCHING_DIR, arm.init, base.device)
    return {"seed": seed, "run": MATCHING_DIR, "iterations": 0, "test_dice": score.dice,
            "test_mean_dice": score.mean_dice, "test_dice_per_case": score.per_case, "curve": [],
            "train_seconds": round(time.perf_counter() - started, 3)}


def run_comparison(base: FinetuneConfig, arms: Sequence[Arm], seeds: Sequence[int], out: Path | str, *,
                   test_data: Optional[str] = None, resume: bool = False,
                   on_event: Optional[Callable[[dict], None]] = None) -> dict:
    """Train every arm with every seed (seed-major) as ``base`` says, score each arm-run's final model on the
    held-out cases, and return the summary written to ``OUT/comparison.json`` (see the module doc).

    ``base``: the shared configuration (its ``data``, ``val_data``, budget and schedule; its ``mode``, ``init``,
    ``seed`` and ``out`` are replaced per arm-run). ``on_event`` receives every record written to
    ``OUT/events.jsonl``. The summary's ``stopped`` says whether a stop ended it early, ``complete`` whether every
    arm-run is scored. Raises ValueError for a bad plan or data before anything is written (bad arm, missing
    checkpoint, OUT holding a trained comparison or run, a different plan on resume), and whatever an arm-run
    raises (after an ``error`` event). One process only (not under ``torchrun``).
    """
    out = Path(out)
    arms, seeds = list(arms), [int(seed) for seed in seeds]
    check_plan(arms, seeds)
    if context_from_environment().enabled:
        raise ValueError("a comparison runs in one process: start it without torchrun")
    base = replace(base, out=str(out), cache=str(base.cache or out / CACHE_NAME), channels=shared_widths(base, arms))
    for arm in arms:
        if arm.mode != MATCHING_MODE:
            arm_config(base, arm, seeds[0])  # each arm's configuration is valid (ValueError otherwise)
    found, val_found, table_file = find_split_cases(base.data, base.val_data)
    cases_by_name = {case.name: case for case in found + val_found}
    test_cases = find_cases(test_data)[0] if test_data else None
    check_test_cases(test_cases or [], found + val_found)
    device = select_device(base.device)
    if resume:
        summary = _resumed_summary(base, arms, seeds, out, test_data)
    elif holds_training(out):
        raise ValueError(f"{out} already holds a trained comparison or run; continue it with --resume {out} or "
                         "choose another --out")
    else:
        summary = new_summary(base, arms, seeds, test_data)
        if len(found) == 1 and not (base.val_data or test_data):
            summary["notes"].append("a single labelled case and no --val-data or --test-data: the held-out Dice is "
                                    "measured on the training case, so it is optimistic")
    out.mkdir(parents=True, exist_ok=True)
    save_config(base, out)
    clear_stop_file(out)
    summary.update(config=config_summary(base), stopped=False, complete=False)
    write_summary(summary, out)
    runs = [(arm, seed) for seed in seeds for arm in arms]
    done = {arm_run_name(arm, r["seed"]) for arm, results in summary["results"].items() for r in results["seeds"]}
    with EventLog(out / EVENTS_NAME, on_event) as events, StopRequest(out) as stop:
        events.write("comparison_start", arms=summary["arms"], seeds=seeds, resumed=resume,
                     arm_runs=[arm_run_name(arm.name, seed) for arm, seed in runs], done=sorted(done))
        try:
            for arm, seed in runs:
                name = arm_run_name(arm.name, seed)
                if name in done:
                    continue
                if stop.requested():
                    events.write("stop", reason=stop.reason, before=name)
                    summary["stopped"] = True
                    break
                if arm.mode == MATCHING_MODE:
                    cases = test_cases or val_found or found
                    entry = score_matching_arm(base, arm, seed, found, cases, table_file, out)
                    summary["labels"] = summary["labels"] or list(entry["test_dice"])
                    record_arm_run(summary, arm.name, entry)
                    write_summary(summary, out)
                    events.write("arm_end", arm=name, seed=seed, test_dice=entry["test_dice"],
                                 test_mean_dice=entry["test_mean_dice"], train_seconds=entry["train_seconds"])
                    continue
                config = arm_config(base, arm, seed)

                def forward(record: dict, name: str = name) -> None:
                    events.write(FORWARDED.get(record["event"], record["event"]), arm=name,
                                 **{k: v for k, v in record.items() if k != "event"})

                result = run_finetune(config, resume=latest_checkpoint(config.out) is not None, on_event=forward,
                                      stop_folders=[out])
                if result.stopped:
                    summary["stopped"] = True
                    break
                model, info = load_segmentation_model(result.checkpoint, device)
                cases = test_cases or [cases_by_name[case] for case in result.val_cases]
                score = held_out_dice(model, info, cases, device=device, precision=base.precision,
                                      sw_batch_size=base.batch, run_dir=Path(config.out))
                summary["labels"] = [e["name"] for e in info.label_table["labels"]]
                curve, seconds = training_curve(read_events(Path(config.out) / EVENTS_NAME))
                entry = {"seed": seed, "run": str(Path(ARMS_DIR) / name), "iterations": result.iteration,
                         "test_dice": score.dice, "test_mean_dice": score.mean_dice,
                         "test_dice_per_case": score.per_case, "curve": curve, "train_seconds": seconds}
                record_arm_run(summary, arm.name, entry)
                write_summary(summary, out)
                events.write("arm_end", arm=name, seed=seed, test_dice=score.dice, test_mean_dice=score.mean_dice,
                             train_seconds=seconds)
            summary["complete"] = all(len(summary["results"][arm.name]["seeds"]) == len(seeds) for arm in arms)
            write_summary(summary, out)
            events.write("end", stopped=summary["stopped"], complete=summary["complete"],
                         verdicts={arm: v["text"] for arm, v in summary["verdicts"].items()},
                         held_out_dice={arm: r["test_mean_dice"] for arm, r in summary["results"].items()},
                         comparison=str(out / COMPARISON_NAME), chart=str(out / CHART_NAME))
        except BaseException as exc:
            events.write("error", type=type(exc).__name__, message=str(exc) or type(exc).__name__)
            raise
    return summary
