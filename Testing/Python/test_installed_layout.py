"""The extension as Slicer installs it, run: what the modules find and start from their installed folder.

The folder is assembled from the CMake listings (``extension_build``): exactly the files the install rules put in
qt-scripted-modules, where they put them; no package metadata for ``gvsl`` (the source checkout has an egg-info,
the extension does not). Everything runs in subprocesses whose working folder is outside the checkout and whose
``PYTHONPATH`` is that folder alone, as Slicer's launcher sets it for an extension.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from extension_build import Extension

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "GVSLShared"))

from GVSLSharedLib import dependencies, runs  # noqa: E402  (imports no slicer)

# What GVSLLogicBase.installPlan and installBackend compute, with the module folder as in Slicer.
PLAN_SCRIPT = """
import importlib.util, json, sys
from pathlib import Path
from GVSLSharedLib import dependencies
plan = dependencies.install_plan(Path(sys.argv[1]))
print(json.dumps({"packages": plan.packages, "pip": plan.pip_arguments(sys.argv[2]),
                  "gvsl": importlib.util.find_spec("gvsl").origin}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """qt-scripted-modules of an installed GVSL extension."""
    folder = Extension.read(ROOT).install_into(tmp_path_factory.mktemp("qt-scripted-modules"))
    for path in ("GVSLPretrain.py", "GVSLSegment.py", "GVSLSharedLib/module_base.py", "gvsl/__init__.py"):
        assert (folder / path).is_file(), path
    return folder


def run_from(installed: Path, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``command`` with the installed folder as the only ``PYTHONPATH`` entry, in ``cwd``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return subprocess.run(command, cwd=cwd, env={**env, "PYTHONPATH": str(installed)}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_missing_packages_are_offered_from_the_installed_layout(installed, tmp_path):
    """In a Python without the backend's requirements (a fresh venv: the standard library only), the module offers
    every requirement Slicer does not provide, and installs only those: the backend ships with the extension."""
    venv.create(tmp_path / "bare", with_pip=False)
    python = tmp_path / "bare" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    result = run_from(installed, [str(python), "-c", PLAN_SCRIPT, str(installed), "pins.txt"], tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert Path(answer["gvsl"]).parent == installed / "gvsl"
    offered = {dependencies.requirement_name(requirement) for requirement in answer["packages"]}
    assert {"monai", "pydicom", "tensorboard"} <= offered
    assert offered.isdisjoint({"numpy", "simpleitk", "vtk", "torch"})
    expected = [requirement for requirement in dependencies.read_requirements(ROOT / "gvsl" / "requirements.txt")
                if dependencies.requirement_name(requirement) not in dependencies.SLICER_PROVIDED]
    assert answer["packages"] == expected
    assert answer["pip"] == [[*expected, "-c", "pins.txt"]]


@pytest.mark.parametrize("arguments", [["--help"], ["finetune", "--help"]], ids=["gvsl", "gvsl-finetune"])
def test_gvsl_runs_from_the_installed_layout(installed, tmp_path, arguments):
    """Once the requirements are installed (this Python has them), ``gvsl`` starts from the installed folder as the
    modules' background processes start it; ``finetune --help`` imports torch, MONAI, TensorBoard, pydicom, SciPy,
    SimpleITK and Pillow."""
    found = run_from(installed, [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('gvsl').origin)"],
                     tmp_path)
    assert Path(found.stdout.strip()).parent == installed / "gvsl", found.stderr
    result = run_from(installed, runs.gvsl_command(*arguments), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: gvsl" in result.stdout


def test_modules_code_imports_from_the_installed_layout(installed, tmp_path):
    """Every Qt-free package of the modules imports from the installed folder alone: GVSLSegment's and
    GVSLPretrain's code find what they share in GVSLSharedLib, installed beside them (``module_base`` needs Slicer's
    application, so only its file is checked, above)."""
    names = sorted(f"{path.parent.name}.{path.stem}" for path in installed.glob("GVSL*Lib/*.py")
                   if path.stem not in ("__init__", "module_base"))
    assert {"GVSLSharedLib.match", "GVSLSegmentLib.pipeline_check", "GVSLPretrainLib.probe"} <= set(names)
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    assert importlib.import_module(name).__file__\n"
    result = run_from(installed, [sys.executable, "-c", script, *names], tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["GVSLPretrain", "GVSLSegment"])
def test_source_checkout_finds_the_shared_package(module, tmp_path):
    """Loaded from a checkout (only the module's folder on the path, as Slicer's Additional module paths give it),
    the module's Lib package makes GVSLSharedLib importable from ../GVSLShared."""
    script = f"import {module}Lib, GVSLSharedLib.dependencies as d; print(d.__file__)"
    result = run_from(ROOT / module, [sys.executable, "-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "GVSLShared" / "GVSLSharedLib" / "dependencies.py"
