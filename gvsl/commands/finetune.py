"""``gvsl finetune DATA --init CHECKPOINT --out RUN_DIR``: fine-tune a pre-trained GVSL backbone into a
segmentation model (resumable, multi-GPU); with ``--compare``, also train other arms (scratch, ...) on the same
cases, crops, seeds and budget and compare their held-out Dice (``gvsl.finetune.compare``). The modules that import
torch are imported where a run starts, so ``gvsl finetune --help`` needs no torch."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gvsl.commands.training_run import add_run_arguments, start_run
from gvsl.finetune.config import MODES, PRETRAINED_MODES, SCHEDULES, FinetuneConfig
from gvsl.train.config import parse_channels, parse_patch, parse_spacing

if TYPE_CHECKING:
    from gvsl.finetune.compare import Arm

COMPARISON_NAME = "comparison.json"  # gvsl.finetune.compare.COMPARISON_NAME (that module imports torch)

EPILOG = """\
DATA: an nnU-Net folder (imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz, names from dataset.json), a CSV
(header image,label) or JSON list of image/label pairs (paths relative to the file), or the Slicer module's
export (a folder with pairs.json and labels.json). Label names/colours: --labels, else labels.json or dataset.json
found with the data, else the values. Preprocessing is the pre-training one (--spacing must match it).
Modes: finetune (all weights), linear (frozen backbone, head only: the paper's linear evaluation), scratch
(random init, same budget: what pre-training bought), random-linear (frozen random backbone, head only: the control
for linear). Loss: Dice + cross-entropy; validation (per-class Dice) every --val-every iterations on fixed crops of
held-out cases (--val-data, else --val-fraction of DATA; a single case is reused, with a note); RUN_DIR/best.pt
holds the best model, RUN_DIR/checkpoints the last ones. Stop with Ctrl-C, SIGTERM or RUN_DIR/STOP; continue
with --resume RUN_DIR. Several GPUs: torchrun --nproc_per_node=N -m gvsl finetune ...

Does pre-training pay on my data? --compare scratch[,linear,random-linear] trains the --mode arm and each listed
mode, each with --seeds seeds, on the same cases, crops and budget (RUN_DIR/arms/ARM-seedK, one cache), scores
each final model on the held-out cases (--test-data, else the validation cases) by segmenting them whole, and
writes RUN_DIR/comparison.json (Dice per label, mean and sd over seeds, learning curves, a verdict against scratch)
and RUN_DIR/comparison.png. One process; stop as above; --resume RUN_DIR continues it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    s = argparse.SUPPRESS  # unset flags stay absent, so the config file and a resumed run's settings apply
    parser.add_argument("data", nargs="?", default=s, metavar="DATA", help="labelled cases (see below)")
    parser.add_argument("--init", default=s, metavar="CHECKPOINT",
                        help="pre-trained checkpoint (ours or the published GVSL state dict); not for --mode scratch")
    parser.add_argument("--out", default=s, metavar="RUN_DIR", help="new run folder (refused if it holds a run)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (field names as in config.json)")
    parser.add_argument("--mode", choices=MODES, default=s, help="what to train (default finetune)")
    parser.add_argument("--labels", default=s, metavar="FILE", help="label table JSON or nnU-Net dataset.json")
    parser.add_argument("--cache", default=s, metavar="DIR", help="preprocessing cache (default RUN_DIR/cache)")
    parser.add_argument("--iterations", type=int, default=s, help="total iterations (default 5000)")
    parser.add_argument("--patch", type=parse_patch, default=s, metavar="N[,N,N]",
                        help="crop size in voxels: one number for a cube or D,H,W (default 96)")
    parser.add_argument("--batch", type=int, default=s, help="crops per iteration and process (default 2)")
    parser.add_argument("--channels", type=parse_channels, default=s, metavar="C1,...,C9",
                        help="backbone widths (default: --init's; must equal them)")
    parser.add_argument("--lr", type=float, default=s, help="Adam's initial learning rate (default 1e-4)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=s,
                        help="learning rate schedule: poly (lr (1 - i/iterations)^0.9, default) or constant")
    parser.add_argument("--weight-decay", type=float, default=s, help="Adam weight decay (default 0)")
    parser.add_argument("--foreground", type=float, default=s,
                        help="fraction of crops centred on a labelled voxel (default 0.5)")
    parser.add_argument("--val-every", type=int, default=s, help="iterations between validations (250)")
    parser.add_argument("--val-fraction", type=float, default=s, help="share of cases held out (0.2)")
    parser.add_argument("--val-data", default=s, metavar="DATA",
                        help="labelled cases (layouts as DATA) used only for validation, instead of --val-fraction")
    parser.add_argument("--val-windows", type=int, default=s, metavar="N",
                        help="validate on N fixed crops of the held-out cases (default 16: a few steps' time); "
                             "0: whole volumes by sliding windows (slow on large volumes)")
    parser.add_argument("--spacing", type=parse_spacing, default=s, metavar="MM[,MM,MM]",
                        help="voxel size of the preprocessed grid in mm: one size, X,Y,Z or X Y Z (default 1; as "
                             "pre-training)")
    parser.add_argument("--modality", choices=("auto", "CT", "MR"), default=s, help="intensity normalisation")
    parser.add_argument("--seed", type=int, default=s, help="seed of weights, crops and augmentation (default 0)")
    boolean = argparse.BooleanOptionalAction
    parser.add_argument("--augment", action=boolean, default=s, help="spatial and intensity augmentation (on)")
    parser.add_argument("--compare", metavar="MODE[,MODE...]",
                        help="also train these modes on the same cases, crops, seeds and budget and compare held-out "
                             "Dice (scratch, linear, random-linear, finetune; see below)")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="with --compare: train every arm with seeds --seed .. --seed+N-1 (default 1)")
    parser.add_argument("--test-data", metavar="DATA",
                        help="with --compare: labelled cases (layouts as DATA) scored by every arm's final model "
                             "(default: the validation cases)")
    add_run_arguments(parser, FinetuneConfig)


def comparison_arms(config: FinetuneConfig, compare: str) -> list[Arm]:
    """The arms of ``--compare MODE,...``: the run's own mode first, then each listed mode, named by their mode;
    the pre-trained modes start from ``--init``. ValueError for an unknown or repeated mode, or a missing --init."""
    from gvsl.finetune.compare import Arm

    modes = [config.mode, *(mode.strip() for mode in compare.split(",") if mode.strip())]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise ValueError(f"--compare {compare}: {', '.join(unknown)} is not a mode; the modes are {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--compare {compare} with --mode {config.mode}: each mode is trained once")
    if len(modes) < 2:
        raise ValueError("--compare needs at least one mode to compare with, e.g. --compare scratch")
    needing = [mode for mode in modes if mode in PRETRAINED_MODES]
    if needing and config.init is None:
        raise ValueError(f"{', '.join(needing)} starts from the pre-trained model: give --init CHECKPOINT")
    return [Arm(mode, mode, config.init if mode in PRETRAINED_MODES else None) for mode in modes]


def comparison_note(args: argparse.Namespace) -> str:
    """For a new comparison that failed before its first checkpoint: that its folder can be given to --out again."""
    from gvsl.finetune.compare import holds_training

    out = getattr(args, "out", None)
    if args.resume is not None or out is None or not Path(out).is_dir() or holds_training(Path(out)):
        return ""
    return f" (nothing was trained: {out} holds no checkpoint and can be given to --out again)"


def run_comparison_command(args: argparse.Namespace) -> int:
    """``--compare`` or ``--resume`` of a comparison folder: run it, print the table and where the files are."""
    from gvsl.finetune.compare import CHART_NAME, read_plan, run_comparison, summary_table

    if args.resume is not None and (args.compare is not None or args.seeds is not None or args.test_data is not None):
        print("gvsl finetune: error: --resume continues the comparison as planned; leave out --compare, --seeds and "
              "--test-data", file=sys.stderr)
        return 1

    def compare(config: FinetuneConfig, *, resume: bool, on_event: Any) -> dict:
        if resume:
            arms, seeds, test_data = read_plan(config.out)
        else:
            if args.seeds is not None and args.seeds < 1:
                raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
            arms, test_data = comparison_arms(config, args.compare), args.test_data
            seeds = list(range(config.seed, config.seed + (args.seeds or 1)))
        return run_comparison(config, arms, seeds, config.out, test_data=test_data, resume=resume,
                              on_event=on_event)

    summary, status = start_run("finetune", args, FinetuneConfig, compare, note=comparison_note)
    if summary is None:
        return status
    out = Path(args.resume or args.out)
    print(summary_table(summary))
    for note in summary["notes"]:
        print(f"note: {note}")
    state = "complete" if summary["complete"] else "stopped; continue with: gvsl finetune --resume " + str(out)
    print(f"gvsl finetune: comparison {state}; {out / COMPARISON_NAME}, {out / CHART_NAME}")
    return 0


def run(args: argparse.Namespace) -> int:
    resume_comparison = args.resume is not None and (Path(args.resume) / COMPARISON_NAME).is_file()
    if args.compare is not None or resume_comparison:
        return run_comparison_command(args)
    if args.seeds is not None or args.test_data is not None:
        print("gvsl finetune: error: --seeds and --test-data go with --compare", file=sys.stderr)
        return 1
    from gvsl.finetune.engine import run_finetune

    result, status = start_run("finetune", args, FinetuneConfig, run_finetune)
    if result is None:
        return status
    state = "stopped at" if result.stopped else "finished at"
    best = f"best validation Dice {result.best_dice:.3f} in {result.best}" if result.best else "no validation yet"
    print(f"gvsl finetune: {state} iteration {result.iteration}; {best}; run folder {result.run_dir}"
          + (f"; continue with: gvsl finetune --resume {result.run_dir}" if result.stopped else
             f"; segment with: gvsl segment IMAGE --model {result.run_dir} --out LABELS.nii.gz"))
    return 0
