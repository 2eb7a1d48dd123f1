"""``gvsl match FIXED MOVING [--checkpoint C] --out DIR``: register two scans with a GVSL network.

Without ``--checkpoint`` an untrained network (``gvsl.checkpoints.write_untrained_checkpoint``, written into DIR as
``UNTRAINED_NAME``) gives the start and the refinement on the pair does the matching.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoints import write_untrained_checkpoint
from ..data import PrepareConfig
from ..match import MatchOptions, match_files, write_outputs
from ..train.config import parse_spacing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, prepare = MatchOptions(), PrepareConfig()
    source = "a volume file (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series"
    parser.add_argument("fixed", help=f"fixed scan: {source}; outputs are on its grid")
    parser.add_argument("moving", help=f"moving scan: {source}")
    parser.add_argument("--checkpoint",
                        help="GVSL checkpoint (ours or the published state dict); default: an untrained network, the "
                             "refinement on the pair carrying the match (with --refine 0 it would be the untrained "
                             "network's answer)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--labels", help="label map defined on the moving scan, to carry onto the fixed grid")
    for name in ("fixed", "moving"):
        parser.add_argument(f"--{name}-modality", choices=("auto", "CT", "MR"), default="auto",
                            help=f"modality of the {name} scan (default: inferred from its intensities)")
    parser.add_argument("--initial-alignment", choices=("centres-of-mass", "physical"),
                        help="how the moving scan is placed in the fixed scan's frame before the network: "
                             "centres-of-mass or physical (the scans share a frame); default: the rule the checkpoint "
                             "was trained with, else centres-of-mass")
    parser.add_argument("--refine", type=int, default=defaults.refine_iterations, metavar="N",
                        help=f"the most optimisation steps per refinement stage on the pair itself, from the network's "
                             f"affine; a stage stops earlier once converged (default {defaults.refine_iterations}; 0: "
                             f"the network's answer alone)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)")
    trained = "default: the checkpoint's training preprocessing, else"
    parser.add_argument("--spacing", type=parse_spacing, metavar="MM[,MM,MM]",
                        help=f"voxel size in mm the network sees the scans at: one size, X,Y,Z or X Y Z, taken as "
                             f"given (default: the checkpoint's training spacing, else "
                             f"{','.join(map(str, prepare.target_spacing))}, or the scans' own resolution where that "
                             "is coarser)")
    parser.add_argument("--ct-window", type=float, nargs=2, metavar=("LO", "HI"),
                        help=f"HU mapped to 0 and 1 ({trained} {' '.join(map(str, prepare.ct_window))})")
    parser.add_argument("--mr-percentiles", type=float, nargs=2, metavar=("LO", "HI"),
                        help=f"MR percentiles mapped to 0 and 1 ({trained} "
                             f"{' '.join(map(str, prepare.mr_percentiles))})")
    parser.add_argument("--max-size", type=int, nargs=3, default=defaults.max_size_xyz, metavar=("X", "Y", "Z"),
                        help="largest network input in voxels, multiples of 16 (default 160 160 160); larger scans "
                             "are seen whole at a coarser spacing")


UNTRAINED_NAME = "untrained_network.pt"  # in --out, when no --checkpoint is given


def run(args: argparse.Namespace) -> int:
    try:
        checkpoint = args.checkpoint or write_untrained_checkpoint(Path(args.out) / UNTRAINED_NAME)
        match = match_files(args.fixed, args.moving, checkpoint, MatchOptions.from_arguments(args),
                            labels=args.labels)
        written = write_outputs(args.out, match.result, match.record, match.labels)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"gvsl match: {exc}", file=sys.stderr)
        return 1
    result = match.result
    stages = [("network", result.network_metrics)] + ([("refined", result.metrics)] if result.refine_iterations else [])
    for stage, metrics in stages:
        print(f"{stage}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    for path in written:
        print(f"wrote {path}")
    return 0
