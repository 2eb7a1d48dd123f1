"""Static checks of the extension's build description: what Slicer's build copies, installs and tests.

The CMake files are read, not run. Each ``slicerMacroBuildScriptedModule`` and ``ctkMacroCompilePythonScript``
call is turned into the (source file, installed path) pairs that CTK's copy step makes: a relative entry ``f`` is
copied from ``<its CMakeLists folder>/f`` to ``<qt-scripted-modules>/f``, and ``install(DIRECTORY)`` ships only what
lands inside that folder. Slicer looks for a module's icon at ``Resources/Icons/<Module>.png`` beside the module
file, and the modules import the backend as the top-level package ``gvsl``.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_FIELDS = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                    "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")
CATALOGUE_FIELDS = ("$schema", "scm_url", "scm_revision", "build_dependencies", "category", "tier")
_COMMAND = re.compile(r"(\w+)\s*\(")
_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"]+)')
_VARIABLE = re.compile(r"\$\{(\w+)\}")


def cmake_commands(text: str) -> list[tuple[str, list[str]]]:
    """(lower-case command name, raw arguments) of every command in a CMake file; comments dropped."""
    text = re.sub(r'#[^\n"]*(?=\n|$)', "", text)
    commands, position = [], 0
    while (found := _COMMAND.search(text, position)) is not None:
        depth, end = 1, found.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        body = text[found.end():end - 1]
        commands.append((found.group(1).lower(),
                         [quoted if quoted else bare for quoted, bare in _ARGUMENT.findall(body)]))
        position = end
    return commands


def expand(arguments: list[str], variables: dict[str, list[str]]) -> list[str]:
    """Arguments with known ``${VAR}`` substituted (unknown ones, e.g. Slicer's, kept as written); an argument that
    is just ``${LIST}`` becomes the list's items."""
    expanded = []
    for argument in arguments:
        whole = _VARIABLE.fullmatch(argument)
        if whole and whole.group(1) in variables:
            expanded.extend(variables[whole.group(1)])
        else:
            expanded.append(_VARIABLE.sub(lambda m: ";".join(variables.get(m.group(1), [m.group(0)])), argument))
    return expanded


def keyword_values(arguments: list[str], keyword: str, keywords: tuple[str, ...]) -> list[str]:
    """The values after ``keyword`` up to the next keyword of ``keywords``."""
    if keyword not in arguments:
        return []
    values = []
    for value in arguments[arguments.index(keyword) + 1:]:
        if value in keywords:
            break
        values.append(value)
    return values


@dataclass
class CMakeFile:
    """What one CMakeLists.txt sets and calls, with its variables evaluated in order."""

    folder: Path
    variables: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path, inherited: dict[str, list[str]] | None = None) -> CMakeFile:
        parsed = cls(folder, dict(inherited or {}, CMAKE_CURRENT_SOURCE_DIR=[str(folder)]))
        for name, raw in cmake_commands((folder / "CMakeLists.txt").read_text(encoding="utf-8")):
            arguments = expand(raw, parsed.variables)
            if name == "set" and arguments:
                parsed.variables[arguments[0]] = [a for a in arguments[1:] if a != "PARENT_SCOPE"]
            elif name == "file" and arguments[:1] in (["GLOB"], ["GLOB_RECURSE"]):
                parsed.variables[arguments[1]] = cls._glob(folder, arguments)
            parsed.calls.append((name, arguments))
        return parsed

    @staticmethod
    def _glob(folder: Path, arguments: list[str]) -> list[str]:
        """CMake's file(GLOB[_RECURSE] VAR [RELATIVE DIR] [CONFIGURE_DEPENDS] PATTERN...) on this checkout."""
        patterns = [a for a in arguments[2:] if a not in ("CONFIGURE_DEPENDS", "LIST_DIRECTORIES")]
        relative = None
        if "RELATIVE" in patterns:
            relative = Path(patterns[patterns.index("RELATIVE") + 1])
            patterns = [p for p in patterns if p not in ("RELATIVE", str(relative))]
        found = []
        for pattern in patterns:
            pattern_path = Path(pattern) if Path(pattern).is_absolute() else folder / pattern
            directory, name = pattern_path.parent, pattern_path.name
            matches = directory.rglob(name) if arguments[0] == "GLOB_RECURSE" else directory.glob(name)
            found += sorted(str(m.relative_to(relative)) if relative else str(m) for m in matches if m.is_file())
        return found

    def called(self, name: str) -> list[list[str]]:
        return [arguments for called, arguments in self.calls if called == name]


@dataclass(frozen=True)
class Copied:
    """One file that the build copies into qt-scripted-modules: its source and its path there."""

    source: Path
    installed: PurePosixPath
    listed_in: Path


def copied_files(cmake: CMakeFile) -> list[Copied]:
    """The copy pairs of the file's slicerMacroBuildScriptedModule and ctkMacroCompilePythonScript calls."""
    keywords = ("NAME", "TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR",
                "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE", "NO_INSTALL_SUBDIR", "GLOBAL_TARGET")
    copies = []
    for macro in ("slicermacrobuildscriptedmodule", "ctkmacrocompilepythonscript"):
        for arguments in cmake.called(macro):
            base = Path((keyword_values(arguments, "SOURCE_DIR", keywords) or [str(cmake.folder)])[0])
            for kind in ("SCRIPTS", "RESOURCES"):
                for entry in keyword_values(arguments, kind, keywords):
                    for item in filter(None, entry.split(";")):
                        if kind == "SCRIPTS" and not item.endswith(".py"):
                            item += ".py"
                        source = Path(item) if Path(item).is_absolute() else base / item
                        copies.append(Copied(source, PurePosixPath(item), cmake.folder / "CMakeLists.txt"))
    return copies


@dataclass
class Extension:
    root: Path
    top: CMakeFile
    modules: dict[str, CMakeFile]

    @classmethod
    def read(cls, root: Path) -> Extension:
        top = CMakeFile.read(root)
        modules = {}
        for arguments in top.called("add_subdirectory"):
            folder = root / arguments[0]
            if (folder / "CMakeLists.txt").is_file():  # a module folder not there yet is skipped
                modules[arguments[0]] = CMakeFile.read(folder, top.variables)
        return cls(root, top, modules)

    def copies(self) -> list[Copied]:
        return [c for cmake in (self.top, *self.modules.values()) for c in copied_files(cmake)]

    def installed(self) -> dict[PurePosixPath, Path]:
        return {c.installed: c.source.resolve() for c in self.copies()}


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
    for script in sorted((root / "gvsl").rglob("*.py")):
        require(script, script.relative_to(root).as_posix(), "backend")
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
    for path in ("CMakeLists.txt", "gvsl", "Resources", *extension.modules):
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


def test_icon_and_screenshot_urls_name_files_of_this_repository():
    """The catalogue shows the icon and screenshots from the published repository: they must be committed here."""
    top = Extension.read(ROOT).top
    base = top.variables["GVSL_FILE_URL"][0] + "/"
    urls = " ".join(top.variables["EXTENSION_ICONURL"] + top.variables["EXTENSION_SCREENSHOTURLS"]).split()
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(base), url
        path = ROOT / url[len(base):]
        assert png_size(path)[0] >= 128, url


def test_module_help_links_to_the_extension_homepage():
    """The modules' help text points to the user guide at the homepage the catalogue shows."""
    text = (ROOT / "GVSLPretrain" / "GVSLPretrain.py").read_text(encoding="utf-8")
    url = re.search(r'^USER_GUIDE_URL = "([^"]+)"', text, re.MULTILINE).group(1)
    top = Extension.read(ROOT).top
    assert url == expand(top.variables["EXTENSION_HOMEPAGE"], top.variables)[0]
    assert "USER_GUIDE_LINK" in (ROOT / "GVSLSegment" / "GVSLSegment.py").read_text(encoding="utf-8")


def test_catalogue_entry_agrees_with_cmake():
    entry = json.loads((ROOT / "GVSL.json").read_text(encoding="utf-8"))
    top = Extension.read(ROOT).top
    assert [name for name in CATALOGUE_FIELDS if name not in entry] == []
    assert "PyTorch" in entry["build_dependencies"]
    assert entry["category"] == " ".join(top.variables["EXTENSION_CATEGORY"])
    assert entry["scm_url"].rstrip("/") == " ".join(top.variables["GVSL_REPOSITORY_URL"]).rstrip("/")
    assert entry["build_subdirectory"] == "."
    assert 1 <= entry["tier"] <= 5
