"""``gvsl finetune DATA --init CHECKPOINT --out RUN_DIR``: fine-tune a pre-trained GVSL backbone into a
segmentation model (resumable, multi-GPU)."""
from __future__ import annotations

import argparse

from gvsl.commands.training_run import add_run_arguments, start_run
from gvsl.finetune.config import MODES, SCHEDULES, FinetuneConfig
from gvsl.finetune.engine import run_finetune
from gvsl.train.config import parse_channels, parse_patch, parse_spacing

EPILOG = """\
DATA: an nnU-Net folder (imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz, names from dataset.json), a CSV
(header image,label) or JSON list of image/label pairs (paths relative to the file), or the Slicer module's
export (a folder with pairs.json and labels.json). Label names/colours: --labels, else labels.json or dataset.json
found with the data, else the values. Preprocessing is the pre-training one (--spacing must match it).
Modes: finetune (all weights), linear (frozen backbone, head only: the paper's linear evaluation), scratch
(random init, same budget: what pre-training bought). Loss: Dice + cross-entropy; validation (per-class Dice)
every --val-every iterations on fixed crops of held-out cases (a single case is reused, with a note); RUN_DIR/best.pt
holds the best model, RUN_DIR/checkpoints the last ones. Stop with Ctrl-C, SIGTERM or RUN_DIR/STOP; continue
with --resume RUN_DIR. Several GPUs: torchrun --nproc_per_node=N -m gvsl finetune ..."""


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
    add_run_arguments(parser, FinetuneConfig)


def run(args: argparse.Namespace) -> int:
    result, status = start_run("finetune", args, FinetuneConfig, run_finetune)
    if result is None:
        return status
    state = "stopped at" if result.stopped else "finished at"
    best = f"best validation Dice {result.best_dice:.3f} in {result.best}" if result.best else "no validation yet"
    print(f"gvsl finetune: {state} iteration {result.iteration}; {best}; run folder {result.run_dir}"
          + (f"; continue with: gvsl finetune --resume {result.run_dir}" if result.stopped else
             f"; segment with: gvsl segment IMAGE --model {result.run_dir} --out LABELS.nii.gz"))
    return 0
