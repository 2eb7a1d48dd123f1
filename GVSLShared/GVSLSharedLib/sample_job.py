"""Sample head volumes for the modules' self-tests, written in a background process.

``python sample_job.py --out DIR [--subjects N] [--spacing MM]`` writes warped copies of the MNI152 T1 head and
their tissue label maps (``gvsl.sample_data.write_sample_heads``: ``DIR/volumes``, ``DIR/labels``). It needs the
backend with its sample data (``pip install "gvsl[sample]"``: the template comes inside the nilearn wheel) and
exits with ``MISSING_SAMPLE_DATA`` when that is not installed. The module runs it with Slicer's Python; the backend
is imported only inside ``main``.
"""
import argparse
import faulthandler
import sys

MISSING_SAMPLE_DATA = 3  # exit status: the backend or nilearn is not installed


def main(argv=None) -> int:
    faulthandler.enable()  # a native crash leaves the Python traceback in the log
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--subjects", type=int, default=3, help="number of heads (default 3)")
    parser.add_argument("--spacing", type=float, default=4.0, help="voxel size in mm (default 4)")
    args = parser.parse_args(argv)
    try:
        from gvsl.sample_data import write_sample_heads

        write_sample_heads(args.out, n_subjects=args.subjects, spacing=args.spacing)
    except ModuleNotFoundError as exc:
        print(f"sample data: {exc}", file=sys.stderr)
        return MISSING_SAMPLE_DATA
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"sample data: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
