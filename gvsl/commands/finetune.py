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
from gvsl.finetune.config import COLLECTION_MODE, MODES, PRETRAINED_MODES, SCHEDULES, FinetuneConfig
from gvsl.train.config import parse_channels, parse_patch, parse_spacing

if TYPE_CHECKING:
    from gvsl.finetune.compare import Arm

COMPARISON_NAME = "comparison.json"  # gvsl.finetune.compare.COMPARISON_NAME (that module imports torch)
EXTRA_ARMS = ("matching", "collection")  # --compare arms that are not modes (gvsl.finetune.compare)

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

Your unlabelled collection (--unlabelled DIR): every labelled case is matched onto every usable scan of DIR (as
gvsl match: network and refinement; kept in RUN_DIR/collection, so a run started again reuses them), the carried
label maps are fused by vote into pseudo-labels (voxels where they disagree are left out of the loss), and crops
come equally from the labelled cases and the pseudo-labelled scans. DIR may hold the very scans you
will segment later. With --unlabelled the default mode is scratch: --init (or --match-checkpoint) matches, and the
network starts from random weights with --init's widths, which segmented better than starting from --init on every
donor measured; --mode finetune starts it from --init.

Does pre-training pay on my data? --compare scratch[,linear,random-linear] trains the --mode arm and each listed
mode, each with --seeds seeds, on the same cases, crops and budget (RUN_DIR/arms/ARM-seedK, one cache), scores
each final model on the held-out cases (--test-data, else the validation cases) by segmenting them whole, and
writes RUN_DIR/comparison.json (Dice per label, mean and sd over seeds, learning curves, a verdict against scratch)
and RUN_DIR/comparison.png. One process; stop as above; --resume RUN_DIR continues it. Does my unlabelled collection
pay? --unlabelled DIR --compare matching,collection adds two rows: matching (no training: the labelled cases'
labels carried onto each held-out case by gvsl match and fused) and collection (the --mode arm trained with DIR as
above); the --mode arm itself (scratch unless given) trains on the labelled cases alone."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    s = argparse.SUPPRESS  # unset flags stay absent, so the config file and a resumed run's settings apply
    parser.add_argument("data", nargs="?", default=s, metavar="DATA", help="labelled cases (see below)")
    parser.add_argument("--init", default=s, metavar="CHECKPOINT",
                        help="pre-trained checkpoint (ours or the published GVSL state dict): the network's start "
                             "(finetune, linear) and, with --unlabelled, the network that matches the collection")
    parser.add_argument("--out", default=s, metavar="RUN_DIR", help="new run folder (refused if it holds a run)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (field names as in config.json)")
    parser.add_argument("--mode", choices=MODES, default=s,
                        help=f"what to train (default finetune; {COLLECTION_MODE} with --unlabelled)")
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
    parser.add_argument("--unlabelled", default=s, metavar="DIR",
                        help="a folder of unlabelled scans (DICOM, NIfTI, NRRD: what gvsl scan reads): every labelled "
                             "case is matched onto each, and training also uses the carried labels (see below)")
    parser.add_argument("--match-checkpoint", default=s, metavar="CHECKPOINT",
                        help="the GVSL network that matches the labelled cases onto --unlabelled's scans (default "
                             "--init; without either, an untrained network: the refinement carries the match)")
    parser.add_argument("--match-workers", type=int, default=s, metavar="N",
                        help="scans matched at once, each in its own process (default: one per four CPU cores; one "
                             "on a GPU)")
    boolean = argparse.BooleanOptionalAction
    parser.add_argument("--augment", action=boolean, default=s, help="spatial and intensity augmentation (on)")
    parser.add_argument("--compare", metavar="MODE[,MODE...]",
                        help="also train these modes on the same cases, crops, seeds and budget and compare held-out "
                             "Dice (scratch, linear, random-linear, finetune; matching and collection with "
                             "--unlabelled; see below)")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="with --compare: train every arm with seeds --seed .. --seed+N-1 (default 1)")
    parser.add_argument("--test-data", metavar="DATA",
                        help="with --compare: labelled cases (layouts as DATA) scored by every arm's final model "
                             "(default: the validation cases)")
    add_run_arguments(parser, FinetuneConfig)


def comparison_arms(config: FinetuneConfig, compare: str) -> list[Arm]:
    """The arms of ``--compare MODE,...``: the run's own mode first (trained on the labelled cases alone), then each
    listed one, named by it: a mode; ``matching`` (no training: the labels carried by matching, with
    ``--match-checkpoint`` or ``--init``); ``collection`` (the run's mode trained with ``--unlabelled``). The
    pre-trained modes start from ``--init``. ValueError for an unknown or repeated mode, a missing --init, or
    ``collection`` without --unlabelled."""
    from gvsl.finetune.compare import MATCHING_MODE, Arm

    names = [config.mode, *(mode.strip() for mode in compare.split(",") if mode.strip())]
    unknown = [name for name in names if name not in (*MODES, *EXTRA_ARMS)]
    if unknown:
        raise ValueError(f"--compare {compare}: {', '.join(unknown)} is not a mode; the modes are "
                         f"{', '.join((*MODES, *EXTRA_ARMS))}")
    if len(set(names)) != len(names):
        default = " (the default with --unlabelled)" if config.unlabelled and config.mode == COLLECTION_MODE else ""
        raise ValueError(f"--compare {compare} with --mode {config.mode}{default}: each mode is trained once")
    if len(names) < 2:
        raise ValueError("--compare needs at least one mode to compare with, e.g. --compare scratch")
    needing = [name for name in names if name in PRETRAINED_MODES]
    if needing and config.init is None:
        raise ValueError(f"{', '.join(needing)} starts from the pre-trained model: give --init CHECKPOINT")
    if "collection" in names and config.unlabelled is None:
        raise ValueError("the collection arm trains with your unlabelled scans: give --unlabelled DIR")
    init = config.init if config.mode in PRETRAINED_MODES else None
    arms = []
    for name in names:
        if name == MATCHING_MODE:
            arms.append(Arm(name, MATCHING_MODE, config.match_checkpoint or config.init))
        elif name == "collection":
            arms.append(Arm(name, config.mode, init, config.unlabelled))
        else:
            arms.append(Arm(name, name, config.init if name in PRETRAINED_MODES else None))
    return arms


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
