"""``gvsl prepare PATH --cache DIR``: preprocess every usable series into a training cache (incremental)."""
from __future__ import annotations

import argparse
import sys

from ..data import NoUsableDataError, PrepareConfig, prepare_cache
from ..train.config import parse_spacing
from .output import print_report
from .scan import add_selection_arguments, selection_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PrepareConfig()
    parser.add_argument("path", help="DICOM folder tree, volume file(s) folder, or an existing cache to check")
    parser.add_argument("--cache", required=True, help="cache folder (created if missing; updated incrementally)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: in this process)")
    parser.add_argument("--spacing", type=parse_spacing, default=defaults.target_spacing, metavar="MM[,MM,MM]",
                        help="target voxel size in mm: one size, X,Y,Z or X Y Z (default 1)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=defaults.ct_window, metavar=("LO", "HI"),
                        help="HU mapped to 0 and 1 (default -1024 1024)")
    parser.add_argument("--mr-percentiles", type=float, nargs=2, default=defaults.mr_percentiles,
                        metavar=("LO", "HI"), help="MR percentiles mapped to 0 and 1 (default 0.5 99.5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_selection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = PrepareConfig(target_spacing=tuple(args.spacing), ct_window=tuple(args.ct_window),
                           mr_percentiles=tuple(args.mr_percentiles), selection=selection_from_args(args))
    try:
        summary = prepare_cache(args.path, args.cache, config=config, workers=args.workers,
                                progress=not args.no_progress)
    except (NoUsableDataError, OSError) as exc:  # OSError: CacheWriteError, WorkerDiedError, an unlistable path
        print(f"gvsl prepare: {exc}", file=sys.stderr)
        return 1
    return print_report(summary.format())
