"""Static checks of the extension's build description: what Slicer's build copies, installs and tests.

The CMake files are read, not run (``extension_build``). Slicer looks for a module's icon at
``Resources/Icons/<Module>.png`` beside the module file, and the modules import the backend as the top-level package
``gvsl``, whose every file (scripts and data, e.g. its requirements) must be installed with it.
"""
from __future__ import annotations

import ast
import re
import shutil
import struct
from pathlib import Path, PurePosixPath

import pytest
from extension_build import Copied, Extension

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_FIELDS = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                    "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")


def problems_of(root: Path) -> list[str]:
    """Every way the build description misses or mislocates a file the extension needs (empty: none)."""
    extension = Extension.read(root)
    problems = []
    copies = extension.copies()
    seen: dict[PurePosixPath, Copied] = {}
    for copy in copies:
        where = copy.listed_in.relative_to(root)
        if not copy.source.is_file():
            problems.append(f"{where}: listed file {copy.source} does not exist")
        if copy.installed.is_absolute() or ".." in copy.installed.parts:
            problems.append(f"{where}: {copy.installed} does not land inside qt-scripted-modules, so it is not "
                            "installed (list paths relative to the CMakeLists folder, without ..)")
        if copy.installed in seen:  # two copy rules for one output: CMake refuses to configure
            first = seen[copy.installed].listed_in.relative_to(root)
            problems.append(f"{where}: {copy.installed} is also listed in {first}")
        seen.setdefault(copy.installed, copy)
    installed = extension.installed()

    def require(path_in_root: Path, installed_as: str, why: str) -> None:
        if installed.get(PurePosixPath(installed_as)) != path_in_root.resolve():
            problems.append(f"{path_in_root.relative_to(root)} ({why}) is not listed to install as {installed_as}")

    for name, cmake in extension.modules.items():
        folder = cmake.folder
        for script in sorted(folder.rglob("*.py")):
            require(script, script.relative_to(folder).as_posix(), f"module {name}")
        require(root / "Resources" / "Icons" / f"{name}.png", f"Resources/Icons/{name}.png", f"{name}'s icon")
        widget = folder / f"{name}.py"
        if widget.is_file() and f"{name}.ui" in widget.read_text(encoding="utf-8"):
            require(root / "Resources" / "UI" / f"{name}.ui", f"Resources/UI/{name}.ui", f"{name}'s UI")
        module_call = cmake.called("slicermacrobuildscriptedmodule")
        if not module_call or "WITH_GENERIC_TESTS" not in module_call[0]:
            problems.append(f"{name}: slicerMacroBuildScriptedModule(... WITH_GENERIC_TESTS) is missing")
        if not any(f"{name}.py" in arguments for arguments in cmake.called("slicer_add_python_unittest")):
            problems.append(f"{name}: slicer_add_python_unittest(SCRIPT {name}.py) is missing")
    for name, cmake in extension.packages.items():
        for script in sorted(cmake.folder.rglob("*.py")):
            require(script, script.relative_to(cmake.folder).as_posix(), f"package {name}")
    for path in sorted((root / "gvsl").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            require(path, path.relative_to(root).as_posix(), "backend")
    for path in sorted(installed):  # Slicer loads every .py file directly in qt-scripted-modules as a module
        if len(path.parts) == 1 and path.suffix == ".py" and path.stem not in extension.modules:
            problems.append(f"{installed[path]} installs as {path}, which Slicer would load as a module: put it in a "
                            "package")
    return problems


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if the file is not a PNG."""
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", header[16:24])


def test_every_needed_file_is_listed_and_every_listed_file_exists():
    assert problems_of(ROOT) == []


def test_a_missing_listing_is_reported(tmp_path):
    """The check above can fail: drop one module script from a copy of the build files."""
    extension = Extension.read(ROOT)
    name = next(iter(extension.modules), None)
    if name is None:
        pytest.skip("no module folder yet")
    for path in ("CMakeLists.txt", "gvsl", "Resources", *extension.modules, *extension.packages):
        copy = shutil.copytree if (ROOT / path).is_dir() else shutil.copy
        copy(ROOT / path, tmp_path / path)
    listing = tmp_path / name / "CMakeLists.txt"
    text, count = re.subn(r"\n[^\n]*Lib/__init__\.py", "", listing.read_text(encoding="utf-8"), count=1)
    assert count == 1
    listing.write_text(text, encoding="utf-8")
    assert any(problem.startswith(f"{name}/{name}Lib/__init__.py ") for problem in problems_of(tmp_path))


def test_extension_metadata():
    top = Extension.read(ROOT).top
    for name in EXTENSION_FIELDS:
        assert " ".join(top.variables.get(name, [])).strip(), f"{name} is empty"
    assert "PyTorch" in " ".join(top.variables["EXTENSION_DEPENDS"]).split()
    assert ["Slicer", "REQUIRED"] in top.called("find_package")
    includes = {arguments[0] for arguments in top.called("include")}
    assert {"${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"} <= includes
    assert png_size(ROOT / "GVSL.png") == (128, 128)


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module a Python file imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_modules_are_siblings_sharing_one_installed_package():
    """Neither module imports the other (nor its Lib): what both use is the shared package, installed beside them,
    whose Qt-free parts import no Qt."""
    extension = Extension.read(ROOT)
    assert set(extension.modules) == {"GVSLPretrain", "GVSLSegment"} and set(extension.packages) == {"GVSLShared"}
    installed = extension.installed()
    shared = ROOT / "GVSLShared" / "GVSLSharedLib"
    for script in sorted(shared.glob("*.py")):
        assert installed[PurePosixPath("GVSLSharedLib", script.name)] == script.resolve()
    for name in extension.modules:
        others = {other for other in extension.modules if other != name}
        others |= {f"{other}Lib" for other in others}
        for script in sorted((ROOT / name).rglob("*.py")):
            assert imported_modules(script) & others == set(), f"{script.relative_to(ROOT)} imports {others}"
        assert "GVSLSharedLib" in imported_modules(ROOT / name / f"{name}.py")
    for script in sorted(shared.glob("*.py")):
        imports = imported_modules(script)
        assert imports.isdisjoint({*extension.modules, *(f"{name}Lib" for name in extension.modules)}), script.name
        if script.name != "module_base.py":
            assert imports.isdisjoint({"qt", "ctk", "torch"}), f"{script.name} imports {imports}"
