"""``gvsl segment IMAGE --model RUN_OR_FILE --out LABELS [--dicom-seg SEG]``: label map of a volume in its exact
geometry, and for a DICOM series also a DICOM SEG that references it. When IMAGE is a scan of the run's unlabelled
collection (``gvsl finetune --unlabelled``), the labels the run carried onto it by matching are fused in."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from gvsl.io.reading import dicom_series_files, read_image
from gvsl.segment.collection_matches import collection_label_maps
from gvsl.segment.dicom_seg import require_highdicom, write_dicom_seg
from gvsl.segment.segment import segment_image, write_segmentation
from gvsl.train.config import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE",
                        help="volume file (NIfTI, NRRD, MHA) in physical units, or a folder holding one DICOM series")
    parser.add_argument("--model", required=True, metavar="RUN_OR_FILE",
                        help="fine-tuning run folder (its best.pt) or a segmentation checkpoint")
    parser.add_argument("--out", required=True, metavar="LABELS",
                        help="output label map (.nii.gz, .nrrd, ...); the table goes to LABELS.labels.json")
    parser.add_argument("--dicom-seg", metavar="SEG",
                        help="also write the segmentation as a DICOM SEG file that references IMAGE, a DICOM series "
                             "folder (segment labels and codes from the label table; needs gvsl[dicom-seg])")
    parser.add_argument("--no-matches", action="store_true",
                        help="the model alone, even where IMAGE is a scan of the run's unlabelled collection (by "
                             "default the labels the run carried onto it by matching are fused in)")
    parser.add_argument("--no-intensity", action="store_true",
                        help="keep the model's (and matches') labels as they are (by default the voxels near the "
                             "structures are refined by IMAGE's own intensities, each structure's histogram learnt "
                             "from its sure voxels)")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    parser.add_argument("--sw-batch", type=int, default=2, help="windows per forward pass (default 2)")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected component of each label")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16/fp16 autocast on GPUs, bf16 on CPUs with native bfloat16 (AVX512-BF16, AMX), "
                             "float32 elsewhere")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        sources = dicom_sources(args) if args.dicom_seg else None
        image = read_image(args.image, sitk.sitkFloat32)
        scan, label_maps = (None, []) if args.no_matches else collection_label_maps(args.model, image)
        if scan is not None:
            print(f"gvsl segment: {args.image} is scan {scan} of the run's unlabelled collection: fused with the "
                  f"{len(label_maps)} label map(s) the run carried onto it (--no-matches: the model alone)")
        label, table = segment_image(image, args.model, overlap=args.overlap, sw_batch_size=args.sw_batch,
                                     largest_component=args.largest_component, device=args.device,
                                     precision=args.precision, label_maps=label_maps,
                                     intensity_refinement=not args.no_intensity)
        written = list(write_segmentation(label, table, args.out))
        if sources is not None:
            written.append(write_dicom_seg(label, table, sources, args.dicom_seg))
    except (ValueError, OSError) as exc:
        print(f"gvsl segment: error: {exc}", file=sys.stderr)
        return 1
    print(f"gvsl segment: wrote {', '.join(map(str, written))} in {time.perf_counter() - start:.1f} s")
    return 0


def dicom_sources(args: argparse.Namespace) -> list[str]:
    """The files of the DICOM series IMAGE that ``--dicom-seg`` references, checked before anything is computed:
    ValueError when IMAGE is not a folder holding one series or when highdicom is missing."""
    if not Path(args.image).is_dir():
        raise ValueError(f"--dicom-seg needs IMAGE to be a folder holding one DICOM series (the SEG references it); "
                         f"{args.image} is not a folder")
    require_highdicom()
    return dicom_series_files(args.image)
