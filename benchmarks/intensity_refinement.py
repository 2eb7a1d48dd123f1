"""What the refinement by the scan's own intensities (``gvsl.segment.intensity_refinement``) does on real scans with
real labels, where the errors are known: two opinions that each lie one voxel off the truth, in opposite directions
(the model and a carried map, as on a collection scan), and one opinion alone, one voxel off with soft edges (the model
on a new scan). Dice against the truth, before and after, for each axis of the shift.

Scans: the MNI152 2009 T1 template at 2 mm with its grey and white matter maps (nilearn wheel); from the pyradiomics
3.0.1 sdist (``benchmarks/real_heads.py`` fetches it with pip): two patients' brain MR with their lesion masks and a
lung CT with its lesion mask, on their own grids (the brains have 6.5 mm slices).

Usage: ``python benchmarks/intensity_refinement.py WORK_DIR`` (the pyradiomics files are kept in WORK_DIR).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from gvsl.finetune.heldout import class_dice
from gvsl.sample_data import load_mni
from gvsl.segment.collection_matches import fuse_with_label_maps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_heads import download, extract  # noqa: E402

PYRADIOMICS = "pyradiomics==3.0.1"
PYRADIOMICS_CASES = ("brain1", "brain2", "lung1")
SURE = 0.9  # the simulated model's probability of its class


def pyradiomics_cases(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (intensities, labels) of ``PYRADIOMICS_CASES`` (fetched into ``folder`` once)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [(name, kind) for name in PYRADIOMICS_CASES for kind in ("image", "label")]
    if not all((folder / f"{name}_{kind}.nrrd").is_file() for name, kind in wanted):
        with tempfile.TemporaryDirectory() as tmp:
            download(PYRADIOMICS, Path(tmp))
            for name, kind in wanted:
                extract(Path(tmp) / "pyradiomics-3.0.1.tar.gz", f"pyradiomics-3.0.1/data/{name}_{kind}.nrrd",
                        folder / f"{name}_{kind}.nrrd")
    cases = {}
    for name in PYRADIOMICS_CASES:
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}_image.nrrd"), sitk.sitkFloat32))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}_label.nrrd")))
        cases[name] = (image, (labels > 0).astype(np.uint16))
    return cases


def mni_case() -> tuple[np.ndarray, np.ndarray]:
    images = {k: sitk.GetArrayFromImage(v) for k, v in load_mni(2.0).items()}
    gm, wm = images["gm"], images["wm"]
    return images["t1"], np.select([(gm > 0.5) & (gm >= wm), (wm > 0.5) & (wm > gm)], [1, 2], 0).astype(np.uint16)


def probabilities_of(classes: np.ndarray, n_classes: int, soft_voxels: float = 0.0) -> np.ndarray:
    """A model's (C, D, H, W) probabilities that give ``classes`` with probability ``SURE``, edges softened by a
    Gaussian of ``soft_voxels``."""
    out = np.full((n_classes, *classes.shape), (1 - SURE) / (n_classes - 1), np.float32)
    for k in range(n_classes):
        out[k][classes == k] = SURE
        if soft_voxels:
            out[k] = ndimage.gaussian_filter(out[k], soft_voxels)
    return out


def mean_dice(classes: np.ndarray, truth: np.ndarray, values: list[int]) -> float:
    return float(np.mean([d for d in class_dice(classes, truth, values) if d is not None]))


def measure(name: str, intensities: np.ndarray, truth: np.ndarray) -> list[str]:
    """Table rows (markdown) for one scan: per shift axis, both settings before and after."""
    values = [int(v) for v in np.unique(truth) if v]
    n = len(values) + 1
    rows = []
    for axis in range(3):
        carried, model = np.roll(truth, 1, axis=axis), np.roll(truth, -1, axis=axis)
        probabilities = probabilities_of(model, n)
        two = [fuse_with_label_maps(probabilities, [carried], values, intensities=i) for i in (None, intensities)]
        alone = probabilities_of(carried, n, soft_voxels=1.0)
        one = [fuse_with_label_maps(alone, [], values, intensities=i) for i in (None, intensities)]
        scores = [mean_dice(c, truth, values) for c in (carried, *two, *one)]
        rows.append(f"| {name} | {axis} | {truth.shape} | {scores[0]:.3f} | {scores[1]:.3f} | **{scores[2]:.3f}** | "
                    f"{scores[3]:.3f} | **{scores[4]:.3f}** |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="folder for the pyradiomics files")
    work = parser.parse_args().work
    print("| scan | shift axis | grid (k, j, i) | one voxel off | two opinions fused | + intensities | one opinion "
          "(soft) | + intensities |")
    print("|---|---|---|---|---|---|---|---|")
    for row in measure("MNI152 grey / white matter", *mni_case()):
        print(row, flush=True)
    for name, (intensities, truth) in pyradiomics_cases(work / "pyradiomics").items():
        for row in measure(f"pyradiomics {name} lesion", intensities, truth):
            print(row, flush=True)


if __name__ == "__main__":
    main()
