"""``gvsl scan PATH``: list the series of a DICOM collection (and volume files) and whether each is usable."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..io import ScanOptions, SeriesInfo, nothing_found_message, scan
from .output import print_report


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The series filters shared by ``scan`` and ``prepare``."""
    defaults = ScanOptions()
    group = parser.add_argument_group("series selection")
    group.add_argument("--modality", nargs="+", choices=("CT", "MR"), default=list(defaults.modalities),
                       help="modalities to keep (default: CT MR)")
    group.add_argument("--description", metavar="REGEX", help="keep series whose series or study description "
                       "matches this regular expression (case insensitive)")
    group.add_argument("--min-slices", type=int, default=defaults.min_slices,
                       help=f"fewer slices is a localizer/scout (default {defaults.min_slices})")
    group.add_argument("--max-series", type=int, help="keep at most this many usable series")
    group.add_argument("--spacing-tolerance", type=float, default=defaults.spacing_tolerance,
                       help="largest deviation of a slice gap from the median gap, as a fraction "
                       f"(default {defaults.spacing_tolerance})")
    group.add_argument("--volume-modality", choices=("auto", "CT", "MR"), default=defaults.volume_modality,
                       help="modality of NIfTI/NRRD/MHA files (auto: CT if it holds air-like HU values)")


def selection_from_args(args: argparse.Namespace) -> ScanOptions:
    return ScanOptions(modalities=tuple(args.modality), description_regex=args.description,
                       min_slices=args.min_slices, max_series=args.max_series,
                       spacing_tolerance=args.spacing_tolerance, volume_modality=args.volume_modality)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="folder (walked recursively) or file")
    parser.add_argument("--json", action="store_true", help="machine-readable output (a JSON list of series)")
    add_selection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when series or volume files were found (usable or not: the listing says why each is skipped),
    1 when there was none at all (as ``gvsl prepare``), 2 when the path does not exist or cannot be read."""
    try:
        records = scan(args.path, selection_from_args(args), progress=not args.json and sys.stderr.isatty())
    except (FileNotFoundError, OSError) as exc:
        print(f"gvsl scan: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"gvsl scan: {nothing_found_message(args.path)}", file=sys.stderr)
        return 1
    return print_report(json.dumps([r.to_dict() for r in records], indent=1) if args.json else format_table(records))


def format_table(records: Sequence[SeriesInfo]) -> str:
    """A readable table: one row per series, then the count of usable series; control characters are escaped."""
    header = ("", "patient", "study", "series", "mod", "description", "files", "MB", "geometry", "reason")
    rows = [header] + [
        ("ok" if r.usable else "--", r.patient_id or "-", _tail(r.study_uid), _tail(r.series_uid) or r.files[0],
         r.modality or "?", r.description or "-", str(r.n_instances), f"{r.size_bytes / 1e6:.1f}",
         r.geometry.describe() if r.geometry else "-", "; ".join(filter(None, [r.reason, r.note])))
        for r in records
    ]
    rows = [tuple(_printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    usable = sum(r.usable for r in records)
    lines.append(f"{usable} usable of {len(records)} series")
    return "\n".join(lines)


def _printable(text: str) -> str:
    """``text`` with control characters (DICOM text may hold escape sequences that would drive the terminal) shown
    as ``\\xNN`` escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _tail(uid: str, n: int = 12) -> str:
    """The last characters of a UID (enough to tell series apart in a table)."""
    return uid if len(uid) <= n else "…" + uid[-n:]
