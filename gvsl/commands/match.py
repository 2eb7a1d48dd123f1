"""``gvsl match FIXED MOVING --checkpoint C --out DIR``: register two scans with a GVSL network."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from ..checkpoints import CheckpointInfo, load_checkpoint, load_gvsl
from ..data import PrepareConfig
from ..io.geometry import grid_differences
from ..match import MatchConfig, MatchResult, RefineConfig, match_volumes
from ..train.config import parse_spacing
from ..train.device import select_device

TRANSFORM_FILE = "transform.h5"
NETWORK_TRANSFORM_FILE = "transform_network.h5"  # with refinement: the network's answer alone
WARPED_FILE = "moving_warped.nii.gz"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels_propagated.nii.gz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, prepare = MatchConfig(), PrepareConfig()
    source = "a volume file (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series"
    parser.add_argument("fixed", help=f"fixed scan: {source}; outputs are on its grid")
    parser.add_argument("moving", help=f"moving scan: {source}")
    parser.add_argument("--checkpoint", required=True, help="GVSL checkpoint (ours or the published state dict)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--labels", help="label map defined on the moving scan, to carry onto the fixed grid")
    for name in ("fixed", "moving"):
        parser.add_argument(f"--{name}-modality", choices=("auto", "CT", "MR"), default="auto",
                            help=f"modality of the {name} scan (default: inferred from its intensities)")
    parser.add_argument("--initial-alignment", choices=("centres-of-mass", "physical"),
                        help="how the moving scan is placed in the fixed scan's frame before the network: "
                             "centres-of-mass or physical (the scans share a frame); default: the rule the checkpoint "
                             "was trained with, else centres-of-mass")
    parser.add_argument("--refine", type=int, default=RefineConfig().iterations, metavar="N",
                        help=f"optimisation steps per refinement stage on the pair itself, from the network's answer "
                             f"(default {RefineConfig().iterations}; 0: the network's answer alone)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)")
    trained = "default: the checkpoint's training preprocessing, else"
    parser.add_argument("--spacing", type=parse_spacing, metavar="MM[,MM,MM]",
                        help=f"target voxel size in mm: one size, X,Y,Z or X Y Z ({trained} "
                             f"{','.join(map(str, prepare.target_spacing))})")
    parser.add_argument("--ct-window", type=float, nargs=2, metavar=("LO", "HI"),
                        help=f"HU mapped to 0 and 1 ({trained} {' '.join(map(str, prepare.ct_window))})")
    parser.add_argument("--mr-percentiles", type=float, nargs=2, metavar=("LO", "HI"),
                        help=f"MR percentiles mapped to 0 and 1 ({trained} "
                             f"{' '.join(map(str, prepare.mr_percentiles))})")
    parser.add_argument("--max-size", type=int, nargs=3, default=defaults.max_size_xyz, metavar=("X", "Y", "Z"),
                        help="largest network input in voxels, multiples of 16 (default 160 160 160); larger scans "
                             "are seen whole at a coarser spacing")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """A volume file, or the one DICOM series in a folder; ValueError naming the path when it cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if len(series) != 1:
                raise ValueError(f"{path}: {len(series)} DICOM series in this folder; a folder holding one is needed")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {path} as an image: {reason}") from exc


def write_outputs(out_dir: Path, result: MatchResult, extra: dict[str, object],
                  labels: sitk.Image | None) -> list[Path]:
    """Write every output under a temporary name, then rename them all: a failure leaves no partial file."""
    report = {**result.metrics, **extra, "initial_alignment": result.initial_alignment,
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


def preprocessing_for(args: argparse.Namespace, payload: dict) -> PrepareConfig:
    """The preprocessing to match with: the flags given, else what the checkpoint was trained with
    (recorded by ``gvsl pretrain``), else the defaults."""
    trained = payload.get("preprocessing") or {}
    default = PrepareConfig()

    def pick(flag, key, fallback):
        value = flag if flag is not None else trained.get(key, fallback)
        return tuple(float(v) for v in value)

    return PrepareConfig(target_spacing=pick(args.spacing, "target_spacing", default.target_spacing),
                         ct_window=pick(args.ct_window, "ct_window", default.ct_window),
                         mr_percentiles=pick(args.mr_percentiles, "mr_percentiles", default.mr_percentiles))


def compute_match(args: argparse.Namespace) -> tuple[MatchResult, CheckpointInfo, sitk.Image | None]:
    """Read the inputs named by the parsed ``args``, load the checkpoint and match (also used by Slicer's probe).

    Returns the match, what the checkpoint is, and the label image to propagate (None without ``--labels``).
    """
    payload = load_checkpoint(args.checkpoint)
    if args.refine < 0:
        raise ValueError(f"--refine must be >= 0, got {args.refine}")
    alignment = args.initial_alignment or payload.get("initial_alignment", "centres-of-mass")
    config = MatchConfig(prepare=preprocessing_for(args, payload), max_size_xyz=tuple(args.max_size),
                         initial_alignment=alignment, refine=RefineConfig(iterations=args.refine))
    fixed, moving = read_image(args.fixed), read_image(args.moving)
    labels = read_image(args.labels) if args.labels else None
    differences = grid_differences(moving, labels) if labels is not None else []
    if differences:
        raise ValueError(f"--labels {args.labels} is not on the moving scan's grid ({'; '.join(differences)}; "
                         "moving vs labels): the labels to carry over must be a label map of the moving scan "
                         f"{args.moving}")
    device = select_device(args.device)
    model, info = load_gvsl(payload, device=device, name=str(args.checkpoint))
    result = match_volumes(fixed, moving, model, fixed_modality=args.fixed_modality,
                           moving_modality=args.moving_modality, config=config, device=device)
    return result, info, labels


def run(args: argparse.Namespace) -> int:
    try:
        result, info, labels = compute_match(args)
        extra = {"conventions": info.conventions, "fixed": str(args.fixed), "moving": str(args.moving),
                 "checkpoint": str(args.checkpoint)}
        written = write_outputs(Path(args.out), result, extra, labels)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"gvsl match: {exc}", file=sys.stderr)
        return 1
    stages = [("network", result.network_metrics)] + ([("refined", result.metrics)] if result.refine_iterations else [])
    for stage, metrics in stages:
        print(f"{stage}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    for path in written:
        print(f"wrote {path}")
    return 0
