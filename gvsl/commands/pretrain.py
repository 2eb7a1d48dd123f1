"""``gvsl pretrain DATA --out RUN_DIR``: prepare or update the cache, then pre-train GVSL (resumable, multi-GPU)."""
from __future__ import annotations

import argparse

from gvsl.commands.training_run import add_run_arguments, start_run
from gvsl.train.config import (
    TrainConfig,
    parse_batch,
    parse_channels,
    parse_duration,
    parse_patch,
    parse_spacing,
)

EPILOG = """\
defaults follow the paper: Adam, lr 1e-4, 128^3 crops, batch 2 (--batch auto: as GPU memory allows), 200000
iterations, loss = NCC + MSE + smoothness.
Settings: defaults < --config FILE (JSON, e.g. an earlier run's config.json) < flags. The resolved configuration
is saved as RUN_DIR/config.json; progress goes to RUN_DIR/events.jsonl and RUN_DIR/tensorboard.
Stop with Ctrl-C, SIGTERM, by creating RUN_DIR/STOP or with --time-limit: a checkpoint is saved; continue with
--resume RUN_DIR.
Several GPUs: torchrun --nproc_per_node=N -m gvsl pretrain DATA --out RUN_DIR (see the README)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    s = argparse.SUPPRESS  # unset flags stay absent, so the config file and a resumed run's settings apply
    parser.add_argument("data", nargs="?", default=s, metavar="DATA",
                        help="DICOM folder, folder of volumes, or a prepared cache (not needed with --resume)")
    parser.add_argument("--out", default=s, metavar="RUN_DIR", help="new run folder (refused if it holds a run)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (field names as in config.json)")
    parser.add_argument("--cache", default=s, metavar="DIR", help="where to prepare the cache (default RUN_DIR/cache)")
    parser.add_argument("--spacing", type=parse_spacing, default=s, metavar="MM[,MM,MM]",
                        help="voxel size of the cache's grid in mm: one size, X,Y,Z or X Y Z (default 1, or DATA's "
                             "when it is a cache)")
    parser.add_argument("--init", default=s, metavar="FILE",
                        help="start from a checkpoint of ours or the published GVSL state dict (original conventions)")
    parser.add_argument("--iterations", type=int, default=s, help="total iterations (a resumed run continues to it)")
    parser.add_argument("--time-limit", dest="time_limit_s", type=parse_duration, default=s, metavar="DURATION",
                        help="stop with a checkpoint after this long, e.g. 30m or 23h (resumable; default: none)")
    parser.add_argument("--patch", type=parse_patch, default=s, metavar="N[,N,N]",
                        help="crop size in voxels: one number for a cube or D,H,W (default 128)")
    parser.add_argument("--batch", type=parse_batch, default=s, metavar="N|auto",
                        help="pairs per iteration and process; auto (default): on a GPU the paper's 2, with "
                             "activation checkpointing, batch 1 or a smaller crop if its free memory needs it "
                             "(the choice is printed and kept in RUN_DIR/config.json); 2 on CPU/MPS")
    parser.add_argument("--channels", type=parse_channels, default=s, metavar="C1,...,C9",
                        help="nine backbone widths (default 32,64,128,256,512,256,128,64,32 or --init's)")
    parser.add_argument("--conventions", choices=("corrected", "original"), default=s,
                        help="network conventions (default: corrected, or --init's)")
    parser.add_argument("--architecture", choices=("correlation", "paper"), default=s,
                        help="correlation (default for new runs): the affine head fits block matches of the two "
                             "scans' features; paper: the published network exactly (default with --init: its own)")
    parser.add_argument("--initial-alignment", choices=("centres-of-mass", "physical"), default=s,
                        help="how B is placed in A's frame before corresponding crops are taken, and how gvsl match "
                             "places scans by default: centres-of-mass (default) or physical (scans share a frame)")
    parser.add_argument("--lr", type=float, default=s, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--weight-ncc", type=float, default=s, help="weight of the NCC term (default 1)")
    parser.add_argument("--weight-mse", type=float, default=s, help="weight of the restoration MSE (default 1)")
    parser.add_argument("--weight-smooth", type=float, default=s, help="weight of the smoothness term (default 1)")
    parser.add_argument("--weight-ncc-affine", type=float, default=s,
                        help="weight of the NCC of B warped by the affine alone (default 0, the paper's loss)")
    parser.add_argument("--synthetic-fraction", type=float, default=s,
                        help="share of pairs that are A against a copy of itself under a known affine, which "
                             "supervises the affine head (default 0, the paper's pairs)")
    parser.add_argument("--weight-synthetic-affine", type=float, default=s,
                        help="weight of the affine's error on those pairs (default 1)")
    parser.add_argument("--seed", type=int, default=s, help="seed of weights, pairs and augmentation (default 0)")
    parser.add_argument("--image-every", type=int, default=s, help="iterations between TensorBoard panels (1000)")
    boolean = argparse.BooleanOptionalAction
    parser.add_argument("--activation-checkpointing", action=boolean, default=s,
                        help="recompute activations in backward to save memory (costs about one more forward pass)")
    parser.add_argument("--channels-last", action=boolean, default=s,
                        help="channels-last-3d memory layout (default: on CPU in fp32 if all widths >= 32; contiguous "
                             "on CUDA, measured faster there, and for bf16 on CPU, whose backward is unreliable)")
    add_run_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from gvsl.pretrain.engine import run_training  # imported here: ``gvsl pretrain --help`` needs no torch

    result, status = start_run("pretrain", args, TrainConfig, run_training)
    if result is None:
        return status
    state = "stopped at" if result.stopped else "finished at"
    print(f"gvsl pretrain: {state} iteration {result.iteration}; run folder {result.run_dir}; "
          f"checkpoint {result.checkpoint}" + (f"; continue with: gvsl pretrain --resume {result.run_dir}"
                                               if result.stopped else ""))
    return 0
