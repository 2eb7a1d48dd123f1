"""What the modules install inside Slicer (``GVSLSharedLib.dependencies``): version ranges checked without importing
torch, one confirmation listing everything, Slicer's own packages never replaced, a restart asked for only when a
package Slicer's process has imported is replaced."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "GVSLShared")]

from GVSLSharedLib import dependencies  # noqa: E402  (imports no slicer)


def test_names_and_ranges_of_requirements():
    assert dependencies.requirement_name("SimpleITK>=2.3") == "simpleitk"
    assert dependencies.requirement_name("scikit_image[data]>=0.2; python_version>'3'") == "scikit-image"
    assert dependencies.version_range("torch>=2.2,<3") == ">=2.2,<3"
    assert dependencies.version_range("tqdm") == ""
    assert dependencies.in_range("2.13.0+cpu", ">=2.2,<3") and not dependencies.in_range("1.13.1", ">=2.2,<3")


def test_missing_and_out_of_range_requirements_are_problems(monkeypatch):
    versions = {"torch": "1.13.1", "monai": "1.6.1", "simpleitk": "2.1.0", "numpy": "2.0.0"}
    monkeypatch.setattr(dependencies, "installed_version", versions.get)
    problems = dependencies.requirement_problems(
        ["torch>=2.2,<3", "monai>=1.3", "SimpleITK>=2.3", "numpy>=1.24", "pydicom>=2.4; python_version>'3'",
         'ruff; extra == "test"'])
    assert [(p.requirement, p.installed) for p in problems] == [
        ("torch>=2.2,<3", "1.13.1"), ("SimpleITK>=2.3", "2.1.0"), ("pydicom>=2.4", None)]
    plan = dependencies.InstallPlan(None, problems)
    assert plan.torch == problems[0]
    assert plan.requirements == ["pydicom>=2.4"]  # torch comes from the PyTorch extension, SimpleITK from Slicer
    assert [p.name for p in plan.unfixable] == ["simpleitk"]
    assert plan.confirmation_lines() == ["torch>=2.2,<3 (installed: 1.13.1)", "pydicom>=2.4 (not installed)"]
    assert plan.pip_arguments("pins.txt") == [["pydicom>=2.4", "-c", "pins.txt"]]


def test_a_restart_is_needed_only_for_replaced_packages_that_are_loaded(monkeypatch):
    plan = dependencies.InstallPlan(None, [dependencies.Problem("monai>=9", "1.6.1"),
                                           dependencies.Problem("pydicom>=2.4", None)])
    monkeypatch.setattr(dependencies.metadata, "packages_distributions",
                        lambda: {"monai": ["monai"], "pydicom": ["pydicom"]})
    assert plan.restart_needed(["monai.networks", "os"]) == ["monai"]
    assert plan.restart_needed(["pydicom", "os"]) == []  # newly installed: nothing old is loaded


def test_the_plan_is_made_without_importing_torch_or_writing_files(tmp_path):
    """In a fresh interpreter, planning the installation leaves torch unimported and the folder untouched."""
    script = ("import sys, json; sys.path[:0] = [sys.argv[1]]; from pathlib import Path\n"
              "from GVSLSharedLib import dependencies\n"
              "plan = dependencies.install_plan(Path(sys.argv[2]))\n"
              "print(json.dumps({'torch': 'torch' in sys.modules, 'lines': plan.confirmation_lines()}))")
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "GVSLShared"), str(ROOT / "GVSLPretrain")],
                            cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip().endswith('"torch": false, "lines": []}') or '"torch": false' in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_sample_datas_requirements_are_the_sample_extra():
    import tomllib
    from GVSLSharedLib import samples

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert list(samples.SAMPLE_REQUIREMENTS) == extras["sample"]
