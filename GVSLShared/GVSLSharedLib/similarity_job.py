"""Feature-similarity map of one fixed point for the correspondence probe, computed in a background process.

``python similarity_job.py FIXED MOVING --checkpoint C --out DIR [gvsl match options] --point-lps X Y Z`` writes
``DIR/similarity.nrrd``: the cosine similarity between the backbone feature at the fixed LPS point and the feature
at every voxel of the moving image, on the moving grid (``MatchResult.feature_similarity``). The module runs it with
Slicer's Python; it imports the backend (and torch) only inside ``main``, so the module can import the name below.
"""
import faulthandler
import sys
from pathlib import Path

SIMILARITY_NAME = "similarity.nrrd"


def main(argv=None) -> int:
    faulthandler.enable()  # a native crash leaves the Python traceback in the log
    import SimpleITK as sitk

    from gvsl.cli import GvslArgumentParser, add_command_arguments
    from gvsl.match import MatchOptions, match_files

    parser = GvslArgumentParser(description=__doc__.splitlines()[0])
    add_command_arguments(parser, "match")
    parser.add_argument("--point-lps", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"),
                        help="the fixed point, physical LPS millimetres")
    args = parser.parse_args(argv)
    try:
        match = match_files(args.fixed, args.moving, args.checkpoint, MatchOptions.from_arguments(args),
                            labels=args.labels)
        similarity = match.result.feature_similarity(args.point_lps)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(similarity, str(Path(args.out) / SIMILARITY_NAME))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"similarity: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
