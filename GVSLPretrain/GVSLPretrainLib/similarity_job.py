"""Feature-similarity map of one fixed point for the correspondence probe, computed in a background process.

``python similarity_job.py FIXED MOVING --checkpoint C --out DIR [gvsl match options] --point-lps X Y Z`` writes
``DIR/similarity.nrrd``: the cosine similarity between the backbone feature at the fixed LPS point and the feature
at every voxel of the moving image, on the moving grid (``MatchResult.feature_similarity``). The module runs it with
Slicer's Python; it imports the backend (and torch) only inside ``main``, so the module can import the name below.
"""
import argparse
import sys
from pathlib import Path

SIMILARITY_NAME = "similarity.nrrd"


def main(argv=None) -> int:
    import SimpleITK as sitk

    from gvsl.checkpoints import load_gvsl
    from gvsl.commands import match as match_command
    from gvsl.data import PrepareConfig
    from gvsl.match import MatchConfig, match_volumes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    match_command.add_arguments(parser)
    parser.add_argument("--point-lps", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"),
                        help="the fixed point, physical LPS millimetres")
    args = parser.parse_args(argv)
    try:
        config = MatchConfig(prepare=PrepareConfig(target_spacing=tuple(args.spacing), ct_window=tuple(args.ct_window),
                                                   mr_percentiles=tuple(args.mr_percentiles)),
                             max_size_xyz=tuple(args.max_size))
        model, _ = load_gvsl(args.checkpoint, device=args.device)
        result = match_volumes(match_command.read_image(args.fixed), match_command.read_image(args.moving), model,
                               fixed_modality=args.fixed_modality, moving_modality=args.moving_modality,
                               config=config, device=args.device)
        similarity = result.feature_similarity(args.point_lps)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(similarity, str(Path(args.out) / SIMILARITY_NAME))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"similarity: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
