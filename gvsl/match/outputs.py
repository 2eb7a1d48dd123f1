"""The files of a match's output folder (``gvsl match --out DIR``), their names and their writing."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from gvsl.match.result import MatchResult

TRANSFORM_FILE = "transform.h5"  # fixed -> moving, LPS
NETWORK_TRANSFORM_FILE = "transform_network.h5"  # with refinement: the network's answer alone
WARPED_FILE = "moving_warped.nii.gz"  # the moving scan resampled into the fixed grid
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels_propagated.nii.gz"  # with labels: the moving label map on the fixed grid


def write_outputs(out_dir: str | os.PathLike, result: MatchResult, record: dict[str, object],
                  labels: sitk.Image | None = None) -> list[Path]:
    """Write the outputs of ``result`` to ``out_dir`` (created if missing), each under a temporary name, then rename
    them all: a failure leaves no partial file. Returns the paths written.

    ``METRICS_FILE`` holds the match's metrics, then ``record`` (what was matched: input paths, checkpoint...), the
    initial alignment, the refinement steps and, with refinement, the network's metrics. ``labels``: a label map on
    the moving grid, carried onto the fixed grid as ``LABELS_FILE``."""
    out_dir = Path(out_dir)
    report = {**result.metrics, **record, "initial_alignment": result.initial_alignment,
              "refine_iterations": result.refine_iterations}
    writers: dict[str, Callable[[Path], None]] = {
        TRANSFORM_FILE: lambda p: sitk.WriteTransform(result.transform, str(p)),
        WARPED_FILE: lambda p: sitk.WriteImage(result.warped, str(p), useCompression=True),
    }
    if result.refine_iterations:
        report["network"] = result.network_metrics
        writers[NETWORK_TRANSFORM_FILE] = lambda p: sitk.WriteTransform(result.network_transform, str(p))
    writers[METRICS_FILE] = lambda p: p.write_text(json.dumps(report, indent=2) + "\n")
    if labels is not None:
        propagated = result.propagate_labels(labels)
        writers[LABELS_FILE] = lambda p: sitk.WriteImage(propagated, str(p), useCompression=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            staged.append((out_dir / f".partial-{os.getpid()}-{name}", out_dir / name))  # keeps the extension last
            write(staged[-1][0])
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return [final for _, final in staged]
